"""`python -m distill ...` and `accelerate launch -m distill ...` enter here."""

from distill.cli import main

if __name__ == "__main__":
    main()
