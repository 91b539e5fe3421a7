"""Entry point of the training child.

    python -m service.training SPEC.json     train one job now
    python -m service.training --warm        import the training stack, emit `ready`, then read
                                             {"spec": SPEC.json, "log": LOG} from stdin and train
    python -m service.training --ranks N SPEC.json
                                             train one job as N data-parallel ranks
                                             (service/training/ranks.py)
    python -m service.training --template    the fork server of a CPU slot: import once, fork a
                                             warm child per request (service/training/template.py)

The runner keeps one `--warm` child per GPU slot, so a claimed job does not wait for torch,
Unsloth and TRL to import (30-40 s on a fresh GPU machine). Stdin closing before a line comes
means the runner is done with it.

Exit codes and the messages on the events pipe: service/contracts/messages.py.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if argv[1:] == ["--template"]:
        from service.procs import die_with_parent
        from service.training import template

        die_with_parent()  # a runner killed even with -9 takes its fork server with it
        return template.main()
    from service.training import child

    return child.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
