"""Coverage-guided fuzz targets (atheris): each module holds one target's contract and seeds.

`python -m tests.fuzz.fuzz TARGET` runs one target under atheris, `python -m tests.fuzz.run`
runs them all for a while each, `python -m tests.fuzz.seeds` rewrites the seed corpus, and
`test_regressions.py` replays the corpus and the recorded crashes under pytest.
"""

TARGETS = ("frames", "signatures", "wire", "config")
