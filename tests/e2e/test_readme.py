"""The README's walk-throughs, run exactly as written: every ```sh and ```python block from "## Walk-throughs" to
"## Threat model", in order, in one bash shell, from a directory holding a fresh `appliance dev-init .dev`
served by `appliance serve`. Only the address changes (the README's http://127.0.0.1:8080 becomes the test's
port), and every confirmation question is answered `y`. A walk-through that drifts from the code fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.served import APPLIANCE, free_port, serve

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```(sh|python)\n(.*?)^```$", re.S | re.M)


def walkthrough_script(readme: str, url: str) -> str:
    """The walk-throughs as one bash script: shell blocks as they are, Python blocks through `python3 -`."""
    text = readme[readme.index("## Walk-throughs"):readme.index("## Threat model")]
    parts = ["set -euo pipefail"]
    for lang, code in BLOCK.findall(text):
        code = code.replace("http://127.0.0.1:8080", url)
        parts.append(code if lang == "sh" else f"python3 - <<'PYTHON'\n{code}PYTHON")
    return "\n".join(parts) + "\n"


def test_the_walkthroughs_run_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SOFTHSM2_CONF", "APPLIANCE_URL",
                                                            "APPLIANCE_TRUST_ANCHOR", "APPLIANCE_READ_KEY")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([*APPLIANCE, "dev-init", str(tmp_path / ".dev"), "--json"], capture_output=True,
                            text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    dev = json.loads(result.stdout)
    port = free_port()
    proc, _ = serve(dev["config"], tmp_path / "serve.log", env, port=port)
    try:
        script = walkthrough_script(README.read_text(encoding="utf-8"), f"http://127.0.0.1:{port}")
        (tmp_path / "walkthrough.sh").write_text(script)
        # `yes`, not a fixed input: each command's Python reads its stdin ahead, so only an endless stream gives
        # every confirmation question its answer
        ran = subprocess.run(["bash", "-c", "yes | bash walkthrough.sh"], cwd=tmp_path, capture_output=True,
                             text=True, env=env, timeout=300, check=False)
    finally:
        proc.terminate()
        proc.wait(30)
    output = ran.stdout + ran.stderr
    assert ran.returncode == 0, f"the README's walk-throughs failed:\n{output[-6000:]}"
    for expected in ("250,000 HKDS  (250,000,000,000 base units)", "status authorized", "signed by the mint key",
                     '~ policy.name: "development" -> "development, reviewed"', "Verified OK", "FULLY_BACKED"):
        assert expected in output, (expected, output[-4000:])


def test_the_script_holds_every_block_and_the_readme_links_nothing_outside_the_repository() -> None:
    readme = README.read_text(encoding="utf-8")
    script = walkthrough_script(readme, "http://x")
    assert script.count("python3 - <<'PYTHON'") == 2 and "appliance verify chain" in script
    assert "http://127.0.0.1:8080" not in script
    for target in re.findall(r"\]\(([^)]+)\)", readme):
        if not target.startswith(("http://", "https://", "#")):
            assert not target.startswith(("../", "/")), target
            assert (README.parent / target).exists(), f"README links {target}, which is not in the repository"
    assert "../shared" not in readme
