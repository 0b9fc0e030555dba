#!/bin/sh
# Run the model check (simulations/modelcheck.py) under PyPy, about 1.6x the
# states per second of CPython on the large configurations. Debian's PyPy is
# Python 3.9: this copies the pure core (node/ballots.py, node/rounds.py) and
# the checker into a scratch directory, spells the two runtime type unions the
# 3.9 way, and sitecustomize.py here adds StrEnum and dataclass(slots=True).
# No other change: the search is the one CPython runs.
#   apt-get install pypy3
#   simulations/pypy/modelcheck.sh --only 16 --depth-first --progress 1000000
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/workmesh/node" "$work/simulations"
touch "$work/workmesh/__init__.py" "$work/workmesh/node/__init__.py" "$work/simulations/__init__.py"
cp "$repo/node/ballots.py" "$work/workmesh/node/"
sed -e 's/^Request = Prepare | Proposal | Certificate$/import typing\nRequest = typing.Union[Prepare, Proposal, Certificate]/' \
    -e 's/^Event = Reply | Tick$/Event = typing.Union[Reply, Tick]/' \
    "$repo/node/rounds.py" > "$work/workmesh/node/rounds.py"
cp "$repo/simulations/modelcheck.py" "$work/simulations/"
cp "$here/sitecustomize.py" "$work/"
cd "$work"
PYTHONPATH="$work" pypy3 -u -m simulations.modelcheck "$@"
