"""``make bench`` / ``python -m bench``: every benchmark, one after the other, each printing its
figures against a baseline measured in the same run. Pass names to run only some:
``python -m bench ingress processing``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["ingress", "processing", "migration", "deal_memory"]


def main(argv: list[str]) -> int:
    wanted = argv or [name for name in ORDER if (HERE / f"{name}.py").exists()]
    failed = []
    for name in wanted:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"bench: no benchmark '{name}' (have: {', '.join(ORDER)})", file=sys.stderr)
            return 2
        print(f"\n=== bench/{name}.py ===", flush=True)
        if subprocess.run([sys.executable, str(script)], cwd=HERE.parent).returncode != 0:
            failed.append(name)
    if failed:
        print(f"bench: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
