"""Experience replay with a reservoir buffer.

Chaudhry, Rohrbach, Elhoseiny, Ajanthan, Dokania, Torr, Ranzato (2019), "On Tiny Episodic Memories in
Continual Learning", arXiv:1902.10486. As in the authors' code (facebookresearch/agem, ER): each step
samples a memory batch, concatenates it with the current batch, takes one SGD step on the joint
cross-entropy, then offers the current batch to the reservoir.

`strategy.buffer=class_balanced` swaps the reservoir for a class-balanced memory (every seen class gets an
equal share; class-balanced reservoir sampling, Chrysakis & Moens, ICML 2020), everything else unchanged.
"""

from clbench.buffer import make_buffer
from clbench.hparams import HP
from clbench.strategy import Strategy
from clbench.strategies.parts import joined_with_memory
from clbench.stream import Batch


class Replay(Strategy):
    """Experience replay (ER, reservoir buffer, memory batch concatenated with the current batch)."""

    description = "experience replay: reservoir (or class-balanced) buffer, memory batch concatenated with each minibatch"
    paper = "Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning, arXiv:1902.10486"
    code = "facebookresearch/agem (ER)"
    hparams = {
        "buffer_size": HP(200, "samples kept in memory, over all tasks", low=0),
        "buffer": HP("reservoir", "insertion policy: reservoir (Chaudhry et al.) or class_balanced (CBRS)",
                     choices=("reservoir", "class_balanced")),
        "mem_batch_size": HP(None, "memory samples per step (null: same as train.batch_size)", type=int, low=1),
    }
    checkpoint_attrs = ("buffer",)
    seed_parallel = True    # seeds can train as one vectorised model (clbench/seed_parallel.py)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buffer = make_buffer(self.hp.buffer, self.hp.buffer_size, self.device, self.generator)
        self.mem_batch = int(self.hp.mem_batch_size or self.train_cfg["batch_size"])

    def loss_batch(self, batch: Batch) -> Batch:
        # 1. joint batch: current samples + a uniform sample of the memory
        # 2. (the inherited loss) one cross-entropy over the joint batch
        return joined_with_memory(batch, self.buffer, self.mem_batch)

    def after_step(self, batch: Batch) -> None:
        # 3. buffer update (reservoir or class-balanced) with the stream samples only
        self.buffer.add(batch)

    def extra_state(self) -> dict:
        return {"buffer": self.buffer.state()}
