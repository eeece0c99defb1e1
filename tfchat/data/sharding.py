"""Which part of the training input one worker reads.

Under `MultiWorkerMirroredStrategy` each of W workers reads, tokenizes and
packs only its own share of the training split, and batches
`batch_size / W` rows of it: the workers' batches together are the global
batch, and their shares together are each epoch exactly once (the input
work per worker shrinks as the cluster grows, instead of every worker
reading everything).

    shard = InputShard(count=4, index=1)
    shard.rows(conversations)      # every 4th conversation from the 2nd
    shard.dataset(texts)           # every 4th element from the 2nd
    shard.files(files)             # every 4th file, when there are >= 4

Files are shared out whole where there are at least as many as workers
(each worker then opens only its own); otherwise elements are, round robin.
Validation is not sharded: every worker reads the same (small) split, so
all of them run the same number of evaluation steps, as collective
all-reduces require.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class InputShard:
    """Part `index` (from 0) of `count` equal parts of the input."""

    count: int = 1
    index: int = 0

    def __post_init__(self):
        if not 0 <= self.index < self.count:
            raise ValueError(f"InputShard index must be in [0, {self.count}). "
                             f"Received: index={self.index}")

    @property
    def whole(self):
        return self.count == 1

    def rows(self, items):
        """Every `count`-th item of a list, from item `index`."""
        return list(items)[self.index::self.count]

    def dataset(self, ds):
        """Every `count`-th element of a tf.data dataset, from `index`."""
        return ds if self.whole else ds.shard(self.count, self.index)

    def files(self, files):
        """This worker's files when there are at least `count`, else None
        (too few to share out whole: shard their elements instead)."""
        if self.whole:
            return list(files)
        if len(files) < self.count:
            return None
        return list(files)[self.index::self.count]

    def batch_size(self, global_batch_size):
        """This worker's rows of each global batch."""
        if global_batch_size % self.count:
            raise ValueError(f"A global batch of {global_batch_size} does not split "
                             f"over {self.count} workers.")
        return global_batch_size // self.count


WHOLE = InputShard()
