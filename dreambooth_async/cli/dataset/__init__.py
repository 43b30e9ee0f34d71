"""What the command line makes of a run's output folder, beyond the images: the run report
(:mod:`.report`), outputs mirrored to any fsspec URL (:mod:`.fsout`), the output layouts and
their shards (:mod:`.layouts`, :mod:`.shard_writer`), several runs merged into one dataset
(:mod:`.merge`), the gallery page (:mod:`.gallery`), and the one atomic file write they share
(:mod:`.atomic`). Only the command line uses them; the library never imports them."""
