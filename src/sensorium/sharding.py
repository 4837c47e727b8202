"""The frozen LM sharded across processes: FSDP2 (``torch.distributed.fsdp.fully_shard``) under Accelerate's FSDP
config, for an LM too large to hold whole on every GPU (a 70B LM in bf16 is 141 GB, 131 GiB).

Why FSDP2 rather than DeepSpeed ZeRO-3. Only the adapter trains, so sharding the frozen weights is the whole
problem, and FSDP2 serves frozen weights best: it shards each parameter on its own (a DTensor), so frozen and
trainable parameters may share a module and the frozen ones get no gradient or optimizer memory, where FSDP1 packs
each unit into one flat parameter. ZeRO-3 would take over the model, the optimizer and the training step (its
engine, its checkpoint format), which a few MB of adapter do not need; Accelerate runs it on GPUs only and
DeepSpeed builds its ops against a CUDA toolchain. FSDP2 is part of torch, runs on gloo over CPUs as on NCCL over
GPUs (the 2-process test runs this very code), and leaves the training loop, the optimizer and the checkpoints as
they are under DDP.

Layout. Each decoder layer is one unit: its weights are all-gathered just before its forward (on GPUs, while the
layer before it computes) and freed after it (``reshard_after_forward``), and again for its backward. The input
embedding is one unit, with the output head when the two share their weight (a shared parameter belongs to one
unit); the rest of the LM (final norm, untied head) is the root unit. The adapter (connector, soft prompt, slot
embedding, a few MB) is not sharded: every process holds it whole, and ``average_gradients`` averages its
gradients over the processes with one all-reduce, as DDP would.

Why injection stays exact. FSDP shards parameters, never activations: each decoder layer runs with its whole
weight on the whole hidden state of this process's batch, and the injection pre-hooks on the layers see and write
the same slot columns as without sharding. The 2-process test checks the losses and the trained adapter against
one unsharded process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from accelerate.utils import FullyShardedDataParallelPlugin, parse_flag_from_env
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, fully_shard

from .injection import decoder_layers


def requested_sharding() -> FullyShardedDataParallelPlugin | None:
    """Accelerate's FSDP settings when the launcher's config asks for FSDP (``distributed_type: FSDP`` sets
    ACCELERATE_USE_FSDP and the FSDP_* settings for every process), else None.

    Read from the environment as Accelerate reads them, on GPUs and on CPUs alike (Accelerate itself builds its FSDP
    plugin for GPU processes only), so that a CPU run shards as a GPU run does.
    """
    if not parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return None
    plugin = FullyShardedDataParallelPlugin()
    refusals = {
        "fsdp_version: 1 (the LM is sharded with FSDP2's fully_shard, one parameter at a time); set fsdp_version: 2":
            plugin.fsdp_version != 2,
        "fsdp_offload_params: true is not supported yet (the model builds its inputs where the LM's shards wait)":
            isinstance(plugin.cpu_offload, CPUOffloadPolicy),
        "fsdp_cpu_ram_efficient_loading: true is not supported yet (every process maps the LM's weight files, then "
        "keeps its shard); set it to false": plugin.cpu_ram_efficient_loading,
        "fsdp_activation_checkpointing: true is not supported (the frozen layers are not wrapped for it)":
            plugin.activation_checkpointing,
    }
    refused = [reason for reason, applies in refusals.items() if applies]
    if refused:
        raise ValueError(f"FSDP config: {'; '.join(refused)}")
    return plugin


def shard_frozen_lm(lm: nn.Module, plugin: FullyShardedDataParallelPlugin, device: torch.device) -> None:
    """Shard ``lm``'s weights over every process (see the module's docstring for the units), in place, on ``device``.

    The LM then runs one tiny forward, so that it becomes FSDP's root before the model calls its input embedding
    on its own (FSDP takes the first unit to run as the root).
    """
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    shard = {"mesh": mesh, "reshard_after_forward": plugin.reshard_after_forward}
    for layer in decoder_layers(lm):
        fully_shard(layer, **shard)
    embedding, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    fully_shard([embedding, head] if tied else embedding, **shard)
    fully_shard(lm, mesh=mesh)  # the root: kept gathered from its forward to its backward, as FSDP does by default
    with torch.no_grad():
        lm(input_ids=torch.zeros(1, 1, dtype=torch.long, device=device), use_cache=False)
    lm.reshard()  # the root keeps its weights gathered after a forward, for the backward that would follow


def is_sharded(lm: nn.Module) -> bool:
    return isinstance(lm, FSDPModule)


def sharded_parameter_count(lm: nn.Module) -> int:
    """The LM's parameters this process holds: its shard of each."""
    return sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in lm.parameters())


def average_gradients(parameters: list[nn.Parameter]) -> None:
    """Each gradient replaced by its mean over the processes, in one all-reduce: what DDP does for the adapter
    (replicated, not sharded, under a sharded LM)."""
    gradients = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in gradients])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for gradient, mean in zip(gradients, flat.split([g.numel() for g in gradients]), strict=True):
        gradient.copy_(mean.view_as(gradient))
