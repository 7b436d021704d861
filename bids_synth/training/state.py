"""Resumable training state: weights, optimizer and RNG in safetensors, progress in JSON.

``<out_dir>/.train_state/state.safetensors`` holds the network weights (``net.*``), the active
optimizer's tensors (``opt.<param>.<name>``) and the ``torch.Generator`` state (``rng``);
``state.json`` holds the stage, step, optimizer param groups, losses and timings. Both files are
written to temporary names and renamed (atomic on POSIX), so a kill leaves the previous state.
Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

__all__ = ['STATE_DIR', 'save_state', 'load_state', 'restore', 'clear_state']

STATE_DIR = '.train_state'


def _atomic(dir_: Path, name: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=dir_)
    os.close(fd)
    write(tmp)
    os.replace(tmp, dir_ / name)


def save_state(out_dir: Path, net: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
               generator: torch.Generator, meta: dict) -> None:
    """Write the training state (weights, optimizer, RNG, ``meta``) atomically."""
    d = Path(out_dir) / STATE_DIR
    d.mkdir(parents=True, exist_ok=True)
    tensors = {f'net.{k}': v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    groups = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        for pid, st in sd['state'].items():
            for k, v in st.items():
                tensors[f'opt.{pid}.{k}'] = torch.as_tensor(v).detach().cpu().contiguous()
        groups = sd['param_groups']
    tensors['rng'] = generator.get_state()
    _atomic(d, 'state.safetensors', lambda p: save_file(tensors, p))
    body = json.dumps(dict(meta, param_groups=groups), indent=1, default=str)
    _atomic(d, 'state.json', lambda p: Path(p).write_text(body))


def load_state(out_dir: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """Read the saved state: ``(meta, tensors)`` or ``None`` when there is none."""
    d = Path(out_dir) / STATE_DIR
    if not (d / 'state.json').is_file() or not (d / 'state.safetensors').is_file():
        return None
    meta = json.loads((d / 'state.json').read_text())
    return meta, load_file(str(d / 'state.safetensors'))


def restore(net: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
            generator: torch.Generator, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Put a loaded state back into the network, optimizer and generator."""
    net.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith('net.')})
    if optimizer is not None and meta.get('param_groups') is not None:
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith('opt.'):
                _, pid, name = k.split('.', 2)
                state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict({'state': state, 'param_groups': meta['param_groups']})
    generator.set_state(tensors['rng'])


def clear_state(out_dir: Path) -> None:
    """Remove the weights of the state (keeps ``state.json`` as a record)."""
    f = Path(out_dir) / STATE_DIR / 'state.safetensors'
    if f.exists():
        f.unlink()
