"""Under ``--json`` stdout holds exactly one JSON object, whoever else writes to stdout meanwhile:
a C++ library on fd 1, or a Ray driver thread on ``sys.stdout`` (the raylet's "N worker processes
have been started" warning arrives that way even with ``log_to_driver=False``)."""

from __future__ import annotations

import json
import os
import sys
import threading

from distml import cli


def test_json_stdout_survives_fd_and_python_level_writes(monkeypatch, capfd):
    def noisy_dispatch(args):
        os.write(1, b"from C++ on fd 1\n")
        # as ray._private.worker.print_to_stdstream does: sys.stdout looked up when printing
        t = threading.Thread(target=lambda: print("(raylet) WARNING: 8 workers", file=sys.stdout))
        t.start()
        t.join()
        return {"status": "succeeded", "name": "x", "kind": "sklearn"}, cli.EXIT_OK

    monkeypatch.setattr(cli, "_dispatch", noisy_dispatch)
    assert cli.main(["validate", "whatever.yaml", "--json"]) == 0
    cap = capfd.readouterr()
    assert json.loads(cap.out) == {"status": "succeeded", "name": "x", "kind": "sklearn"}
    assert "from C++ on fd 1" in cap.err and "(raylet) WARNING: 8 workers" in cap.err
