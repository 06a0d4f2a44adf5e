"""Mutation report: mutmut's results per module and function, as Markdown (run after `mutmut run`).

    python -m benchmarks.mutation_report [--mutmut PATH] [--out FILE]

Counts each mutant's status (killed, survived, timeout, no tests) per module, the share of the mutants that tests
reach which they kill (a timeout is a hang the tests caught: counted as killed), and lists every survivor with its
diff line, grouped by function, for a person to classify.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
from pathlib import Path

from benchmarks import machine


def results(mutmut: str) -> dict[str, str]:
    """{mutant name: status} from `mutmut results --all true`."""
    out = subprocess.run([mutmut, "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return {m.group(1): m.group(2) for m in re.finditer(r"^\s*(\S+): (.+?)\s*$", out, re.M)}


def diff(mutmut: str, name: str) -> str:
    """The mutated line, `- old` / `+ new`, from `mutmut show`."""
    out = subprocess.run([mutmut, "show", name], capture_output=True, text=True).stdout
    lines = [line for line in out.splitlines() if line[:2] in ("- ", "+ ")]
    return " / ".join(line[:2] + line[2:].strip() for line in lines[:2])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.mutation_report", description=__doc__)
    parser.add_argument("--mutmut", default=str(Path(sys.executable).with_name("mutmut")))
    parser.add_argument("--out", default=None, help="Markdown file (default: stdout)")
    args = parser.parse_args(argv)
    status = results(args.mutmut)
    per_module = collections.defaultdict(collections.Counter)
    survivors = collections.defaultdict(list)
    for name, state in status.items():
        module, function = name.split(".x_" if ".x_" in name else ".xǁ", 1)
        per_module[module][state] += 1
        if state == "survived":
            survivors[f"{module}.{function.split('__mutmut_')[0]}"].append(name)
    lines = [f"CPU: {machine.cpu()['model']}. Statuses from `mutmut results --all true`; "
             "reached = killed + timeout + survived.", "",
             "| module | killed | timeout | survived | no tests | killed of reached |", "|---|---|---|---|---|---|"]
    total = collections.Counter()
    for module in sorted(per_module):
        c = per_module[module]
        total.update(c)
        reached = c["killed"] + c["timeout"] + c["survived"]
        share = f"{(c['killed'] + c['timeout']) / reached:.0%}" if reached else "-"
        lines.append(f"| `{module}` | {c['killed']} | {c['timeout']} | {c['survived']} | {c['no tests']} | {share} |")
    reached = total["killed"] + total["timeout"] + total["survived"]
    lines.append(f"| **all** | {total['killed']} | {total['timeout']} | {total['survived']} | {total['no tests']} | "
                 f"**{(total['killed'] + total['timeout']) / max(reached, 1):.1%}** |")
    lines += ["", "## Survivors by function", ""]
    for function in sorted(survivors):
        lines.append(f"- `{function}` ({len(survivors[function])}):")
        for name in survivors[function]:
            lines.append(f"  - `{name.rsplit('__', 1)[-1]}`: `{diff(args.mutmut, name)}`")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
