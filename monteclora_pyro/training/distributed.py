"""Multi-process data-parallel training through Hugging Face Accelerate.

Launched with ``accelerate launch`` or ``torchrun`` (the environment then holds ``WORLD_SIZE``
> 1), :class:`~monteclora_pyro.training.Trainer` runs the same loop in every process, and a
run with W processes equals the one-process run of the same seed and global batch size up to
floating-point rounding:

- **Data.** Every process iterates the same global batches in the same order (the loader's
  shuffling has its own seeded generator) and keeps a contiguous shard of each: rows
  ``[start, stop)`` of :func:`shard_bounds`. Padding is that of the global batch.
- **Objective.** The method's loss is ``nll + R``: ``nll`` the mean negative log-likelihood of
  the examples it is given (the data plate scales a batch of b examples by N/b, and the loss is
  divided by N) and ``R`` the KL and cooperative terms, which depend on the latent draw only.
  Process r with b_r of the B examples of a global batch optimises

      L_r = (W b_r / B) nll_r + R,

  so that the mean over processes, which is what the all-reduce of the gradients computes, is
  ``(1/B) Σ_i nll_i + R``: the one-process objective and gradient, also when the shards are
  unequal (the last batch of an epoch). A process whose shard is empty takes the batch's first
  row with weight 0. Gradients are summed across processes with one all-reduce and divided by W
  before clipping; the logged loss and terms are the means over processes, the one-process
  values.
- **Random streams.** Every process is seeded identically, so the latent sites (covariance,
  concentration, weights, noise) are the same draw everywhere: one draw per global batch, as in
  a one-process run. In our Pyro methods the guide draws from that shared stream; the rest of the
  step (dropout in the backbone and the methods, whose consumption depends on the shard's
  shape) runs on a private stream seeded by (seed, step, rank), so shards get independent
  dropout masks and the shared stream advances identically in every process. PEFT's baselines
  draw their noise inside the forward pass, between dropout draws; there the whole step uses the
  shared stream, and rank 0's stream state is broadcast after each step. Without dropout the
  runs equal the one-process run; with dropout they agree in distribution only (a one-process
  run draws one mask for the whole batch).
- **Files.** Only rank 0 writes the run directory (``config.json``, ``history.jsonl``,
  checkpoints, ``metrics.json``, predictions, the adapter). Rank 0 prepares or resumes the run
  and broadcasts the complete training state to the others, so resuming needs the checkpoint
  on rank 0's file system only, and a run may be resumed with another number of processes.
  Evaluation runs in every process on the whole evaluation set (same parameters, same seeded
  draws, hence the same numbers), which keeps the processes in lockstep.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)

ACCELERATE_REQUIREMENT = "accelerate>=1.0"


def world_size() -> int:
    """Number of processes of the launch (``$WORLD_SIZE``, 1 when not launched)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError as err:
        raise RuntimeError(f"WORLD_SIZE={value!r} is not an integer") from err


def is_main_process() -> bool:
    """Whether this process is rank 0 (``$RANK``; true when not launched)."""
    return os.environ.get("RANK", "0") == "0"


def require_accelerate():
    """Import ``accelerate``, or fail with the command that installs it."""
    try:
        import accelerate
    except ImportError as err:
        raise RuntimeError(
            "multi-process training needs the optional extra 'distributed': pip install "
            f"'monteclora-pyro[distributed]' (or pip install '{ACCELERATE_REQUIREMENT}')"
        ) from err
    return accelerate


def shard_bounds(batch_size: int, num_shards: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of a batch that shard ``rank`` of ``num_shards`` takes.

    Contiguous shards whose sizes differ by at most one, the larger ones first; a shard is
    empty when the batch has fewer rows than there are shards.
    """
    if not 0 <= rank < num_shards:
        raise ValueError(f"rank={rank} is invalid for {num_shards} shards")
    size, extra = divmod(batch_size, num_shards)
    start = rank * size + min(rank, extra)
    return start, start + size + (rank < extra)


def shard_weight(shard_size: int, batch_size: int, num_shards: int) -> float:
    """Weight of a shard's mean data term: ``num_shards · shard_size / batch_size``.

    The mean over shards of ``weight · (mean over the shard)`` is the mean over the batch.
    """
    return num_shards * shard_size / batch_size


def shard_batch(batch: dict, num_shards: int, rank: int) -> tuple[dict, float]:
    """Shard ``rank`` of a collated batch and the weight of its data term.

    Tensors whose first dimension is the batch are sliced; anything else is kept whole. An
    empty shard is replaced by the first row with weight 0, so that every process runs the
    same computation.
    """
    sizes = {v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"cannot shard a batch whose tensors have first dimensions {sizes}")
    (size,) = sizes
    start, stop = shard_bounds(size, num_shards, rank)
    weight = shard_weight(stop - start, size, num_shards)
    if start == stop:
        start, stop = 0, 1
    shard = {
        k: v[start:stop] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
        for k, v in batch.items()
    }
    return shard, weight


def weight_shard_loss(
    loss: torch.Tensor, terms: dict[str, torch.Tensor], weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A shard's objective ``L_r = loss + (weight - 1) · nll`` and its terms.

    ``loss`` and ``terms`` are the method's loss of the shard (``nll`` its mean over the
    shard's examples) and ``weight`` comes from :func:`shard_batch`; the mean of ``L_r`` over
    the shards of a batch is the method's loss of the whole batch.
    """
    nll = terms["nll"]
    return loss + (weight - 1.0) * nll, {**terms, "nll": weight * nll}


def step_seed(seed: int, step: int, rank: int) -> int:
    """Seed of the private random stream of process ``rank`` at ``step``."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, dtype=np.uint64)[0])


def from_environment(seed: int) -> DataParallel | None:
    """A :class:`DataParallel` when launched with several processes, else ``None``."""
    return DataParallel(seed) if world_size() > 1 else None


class DataParallel:
    """This process's part of a data-parallel run (see the module docstring).

    Parameters
    ----------
    seed : int
        The run's seed; the private streams are derived from it.
    """

    def __init__(self, seed: int):
        accelerate = require_accelerate()
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
        # Without cpu=True, accelerate only sets up a process group for GPUs and similar
        # devices; on a CPU-only machine it would treat every process as a lone rank 0.
        self.accelerator = accelerate.Accelerator(cpu=use_cpu or not torch.cuda.is_available())
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.seed = seed
        if self.world_size != world_size() or not dist.is_initialized():
            raise RuntimeError(
                f"accelerate set up {self.world_size} process(es) but WORLD_SIZE={world_size()}: "
                "launch with 'accelerate launch' or 'torchrun'"
            )
        if not self.is_main:
            logging.getLogger("monteclora_pyro").setLevel(logging.WARNING)
        logger.info(
            "data-parallel training on %d processes (%s, backend %s)",
            self.world_size,
            self.device,
            dist.get_backend(),
        )

    def prepare_run_dir(self, trainer, resume: bool) -> None:
        """Rank 0 prepares (or resumes) the run directory; every process gets its state."""
        payload = None
        if self.is_main:
            try:
                trainer.prepare_run_dir(resume)
                payload = {"state": _to_cpu(trainer.training_state())}
            except Exception as err:
                self._broadcast({"error": f"{type(err).__name__}: {err}"})
                raise
        payload = self._broadcast(payload)
        if "error" in payload:
            raise RuntimeError(f"rank 0 could not prepare {trainer.run_dir}: {payload['error']}")
        if not self.is_main:
            trainer.restore_state(payload["state"], f"rank 0's state of {trainer.run_dir}")

    def loss(self, method, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
        """This process's share of the loss of a global batch, and the global terms.

        The returned loss has the gradient of this process's objective ``L_r`` (for the
        all-reduce) and the value of the one-process loss (for logging); the terms are the
        one-process terms.
        """
        shard, weight = shard_batch(batch, self.world_size, self.rank)
        shard = {k: _to(v, self.device) for k, v in shard.items()}
        failure = None
        try:
            with self._random_streams(method, step):
                loss, terms = method.loss(shard)
        except FloatingPointError as err:
            failure = err
        failed = torch.tensor([float(failure is not None)], device=self.device)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            raise failure or FloatingPointError("the loss is not finite in another process")
        loss, terms = weight_shard_loss(loss, terms, weight)
        names = list(terms)
        values = torch.stack(
            [_to(loss, self.device)] + [_to(torch.as_tensor(terms[k]), self.device) for k in names]
        ).double()
        dist.all_reduce(values)
        values /= self.world_size
        global_loss = values[0].to(loss.dtype)
        loss = loss + (global_loss - loss.detach())
        return loss, {k: values[i + 1] for i, k in enumerate(names)}

    def all_reduce_gradients(self, params: list[nn.Parameter]) -> None:
        """Replace every gradient by its mean over processes (one all-reduce).

        A parameter without a gradient in every process keeps none, as in a one-process run.
        """
        grads = [p.grad for p in params]
        present = torch.tensor([g is not None for g in grads], device=self.device)
        dtype = next((g.dtype for g in grads if g is not None), torch.float32)
        flat = torch.cat(
            [
                (g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                for p, g in zip(params, grads, strict=True)
            ]
            + [present.to(dtype)]
        )
        dist.all_reduce(flat)
        sizes = [p.numel() for p in params]
        *chunks, counts = flat.split([*sizes, len(params)])
        for p, chunk, count in zip(params, chunks, counts.tolist(), strict=True):
            if count > 0:
                p.grad = (chunk / self.world_size).view_as(p).to(p.dtype)

    @contextlib.contextmanager
    def _random_streams(self, method, step: int) -> Iterator[None]:
        """Latent draws on the shared stream; the rest of a Pyro step on a private one."""
        if method.guide is None:  # e.g. PEFT: noise drawn inside the forward pass
            try:
                yield
            finally:
                self._sync_rng()
            return
        guide = method.guide
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with contextlib.ExitStack() as private:

            def guide_then_private_stream(*args, **kwargs):
                draws = guide(*args, **kwargs)
                # fork_rng restores the shared stream, as the guide left it, on exit.
                private.enter_context(torch.random.fork_rng(devices=devices))
                seed = step_seed(self.seed, step, self.rank)
                torch.random.default_generator.manual_seed(seed)
                if devices:
                    torch.cuda.manual_seed(seed)
                return draws

            # The method's loss calls its guide first, then the model; the swap lasts this
            # one call.
            method.guide = guide_then_private_stream
            try:
                yield
            finally:
                method.guide = guide

    def _sync_rng(self) -> None:
        """Give every process rank 0's random state (CPU, and this process's GPU)."""
        states = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        states = self._broadcast(states)
        torch.set_rng_state(states["cpu"])
        if "cuda" in states:
            torch.cuda.set_rng_state(states["cuda"], self.device)

    def _broadcast(self, obj):
        """Rank 0's ``obj`` in every process."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._object_device)
        return box[0]

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None


def _to(value, device: torch.device):
    """A detached ``value`` on ``device`` if it is a tensor, else ``value``."""
    return value.detach().to(device) if isinstance(value, torch.Tensor) else value


def _to_cpu(obj):
    """``obj`` with every tensor copied to the CPU (for pickling across devices)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
