"""Checkpoints with torch.distributed.checkpoint: a killed run resumes from the last complete one.

Layout: RUN/checkpoints/step_000050/ holds the sharded model and optimizer (DCP, any world size can
reload them) and one trainer_rank{r}.pt per rank (scheduler, RNG states, data position, step). A
checkpoint is written to a .tmp directory and renamed when complete, so a kill mid-write leaves the
previous checkpoint as the latest.
"""

import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

PREFIX = "step_"

# DCP warns on every save and load of a plain one-process run; one process is a supported case here.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(run_dir: Path, step: int, model, optimizer, trainer_state: dict, keep: int) -> Path:
    """Write the checkpoint of `step` (every rank calls this) and keep only the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f"{PREFIX}{step:06d}.tmp"
    if _rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    # get_state_dict creates the state of an optimizer no step has touched yet (a step with lr 0: AdamW's
    # step count becomes 1, which would change the bias correction of every later step); such a state is
    # saved as fresh and cleared again, here and on load, so a checkpoint changes nothing.
    fresh = not optimizer.state
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp)
    saved = {**trainer_state, "step": step, "rng": rng_state(), "fresh_optimizer": fresh}
    torch.save(saved, tmp / f"trainer_rank{_rank()}.pt")
    if fresh:
        optimizer.state.clear()
    _barrier()
    if _rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.suffix != ".tmp"
    )


def load_checkpoint(path: Path, model, optimizer) -> dict:
    """Restore model, optimizer and this rank's RNG states; returns the trainer state (step, ...)."""
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    trainer_state = torch.load(path / f"trainer_rank{_rank()}.pt", weights_only=False)
    set_rng_state(trainer_state.pop("rng"))
    if trainer_state.pop("fresh_optimizer", False):
        optimizer.state.clear()
    return trainer_state


def export_model(model, tokenizer, path: Path) -> None:
    """The policy as a plain transformers directory (save_pretrained + tokenizer), for evaluation and for
    the next stage of a run (model.name=pretrained model.path=...). Every rank calls it; rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full_state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if _rank() == 0:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, state_dict=full_state)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
    _barrier()
