"""`scribe library build`: learn skill prototypes from trajectories (issue 13, paper §2.1).

The stages, one module each, in the order they run (`build.py` strings them together):

    decompose.py   records → steps with subgoals (the service's own segmenter)
    cluster.py     subgoal embeddings → clusters (average-linkage cosine, cut at a threshold)
    distil.py      one cluster → one validated `Prototype` through the judge backend
    merge.py       clusters close to an existing library's prototypes extend them instead
    write.py       prototype TOML, the `library.toml` manifest and the build report

A built directory is a complete library: `SCRIBE_PROTOTYPES_DIR=DIR scribe serve` serves it.
"""
