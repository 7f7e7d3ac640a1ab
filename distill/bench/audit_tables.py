"""The tables of `python -m distill.bench.audit_targets`: one row per study arm, then every position kind.

    from distill.bench.audit_tables import markdown
    print(markdown(summary, id_counts, n_blocks))     # summary: audit_targets.summarise(...)
"""

from __future__ import annotations

KINDS = ("all", "gendered word before", "no gendered word before", "last gendered word male",
         "last gendered word female", "next token starts a word",
         "next token continues a word", "after a space or punctuation", "after a word character",
         "next word capitalised", "next word not capitalised")


def _f(x, fmt="+.3f") -> str:
    return "-" if x is None else format(x, fmt)


def arm(augment: str, mode: str) -> str:
    """The study arm (distill.study.arms.ARMS) trained on these targets."""
    if mode.startswith("student "):
        return mode
    if augment == "none":
        return "kd" if mode == "none" else mode
    if augment == "both":
        return "cda" if mode == "none" else f"cda_{mode}"
    return f"augment={augment}, {mode}"


# The arm table's columns: (word list, position kind, figure).
ARM_COLUMNS = (("probe", "all", "pooled_logratio"), ("probe", "all", "mean_logratio"),
               ("probe, leading space", "all", "pooled_logratio"), ("table", "all", "pooled_logratio"),
               ("probe", "last gendered word male", "pooled_logratio"),
               ("probe", "last gendered word female", "pooled_logratio"),
               ("probe", "no gendered word before", "pooled_logratio"),
               ("probe", "next token continues a word", "pooled_logratio"))


def arm_table(summary: dict) -> list[str]:
    """One row per (augment, mode): the figures that say whether a target mode leans, and where."""
    head = [f"{name}: {kind}, {'pooled' if fig.startswith('pooled') else 'mean'}" for name, kind, fig in ARM_COLUMNS]
    lines = ["| study arm | augment | mode | " + " | ".join(head) + " |", "|---|---|---|" + "---|" * len(head)]
    for aug, by_mode in summary.items():
        for mode, by_list in by_mode.items():
            cells = [_f(by_list[name][kind][fig]) if name in by_list else "-" for name, kind, fig in ARM_COLUMNS]
            lines.append(f"| {arm(aug, mode)} | {aug} | {mode} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: dict, id_counts: dict, n_blocks: dict) -> str:
    """The arm table, then per augment and word list the figures of every position kind, then the masses.
    id_counts: list -> [male ids, female ids]; n_blocks: augment -> blocks audited."""
    lines = ["Log ratios of the targets' male to female mass (> 0: more male). pooled: log(sum P_m / sum P_f) over "
             "the positions; mean: mean of log(P_m / P_f).", "", *arm_table(summary)]
    for aug, by_mode in summary.items():
        modes = list(by_mode)
        for name in next(iter(by_mode.values())):
            m_ids, f_ids = id_counts[name]
            lines += ["", f"**augment={aug}, {name} ids** ({m_ids} male ids, {f_ids} female; {n_blocks[aug]} "
                          "blocks). Each cell: mean log(P_m/P_f) / pooled log(sum P_m / sum P_f) (> 0: more male)", "",
                      "| position kind | positions | " + " | ".join(modes) + " |",
                      "|---|---|" + "---|" * len(modes)]
            for kind in KINDS:
                n = by_mode[modes[0]][name][kind]["n"]
                cells = [f"{_f(by_mode[m][name][kind]['mean_logratio'])} / "
                         f"{_f(by_mode[m][name][kind]['pooled_logratio'])}" for m in modes]
                lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    lists = list(id_counts)
    lines += ["", "Mean masses over all positions (P_m / P_f):", "",
              "| augment | mode | " + " | ".join(f"{n} P_m / P_f" for n in lists) + " |",
              "|---|---|" + "---|" * len(lists)]
    for aug, by_mode in summary.items():
        for mode, by_list in by_mode.items():
            cells = [f"{by_list[n]['all']['mean_pm']:.4f} / {by_list[n]['all']['mean_pf']:.4f}" for n in lists]
            lines.append(f"| {aug} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
