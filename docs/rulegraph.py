"""Write the workflow's rule graph (``snakemake --rulegraph mermaid-js`` of the default config) into README.md
between the ``rulegraph`` markers, as a mermaid block GitHub renders as a picture: ``make rulegraph``."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- rulegraph: made by `make rulegraph` -->", "<!-- /rulegraph -->"


def mermaid() -> str:
    """The rule graph as a mermaid flowchart, one line per rule with the rules that use its outputs."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "--rulegraph", "mermaid-js"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    names = dict(re.findall(r"^\s*(id\d+)\[(\w+)\]", out, re.M))
    uses: dict[str, list[str]] = {}
    for src, dst in re.findall(r"^\s*(id\d+) --> (id\d+)", out, re.M):
        uses.setdefault(names[src], []).append(names[dst])
    lines = [f"    {src} --> {' & '.join(sorted(dst))}" for src, dst in sorted(uses.items())]  # stable order
    return "```mermaid\nflowchart LR\n" + "\n".join(lines) + "\n```"


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        sys.exit(f"{readme}: expected the markers {START} and {END}")
    head, rest = text.split(START, 1)
    readme.write_text(head + START + "\n" + mermaid() + "\n" + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
