"""training.distributed on a real 2-process gloo group (CPU), and its single-process behaviour."""
import torch
import torch.distributed as dist
from torch import nn

from dist_utils import run_ranks
from scoresde.run import distributed as D


def test_single_process_is_a_world_of_one(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = D.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert not dist.is_initialized()
    x = torch.arange(5.0)
    assert D.all_gather_cat(x, ctx) is x and torch.equal(D.all_reduce_mean(x, ctx), x)
    model = nn.Linear(2, 2)
    assert D.wrap_model(model, ctx) is model
    assert D.shard_range(7, ctx) == range(0, 7)


def test_shard_range_partitions():
    for n in (0, 1, 7, 8, 13):
        for world in (1, 2, 3, 4):
            parts = [D.shard_range(n, D.DistContext(rank=r, world_size=world)) for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_bad_device_is_rejected():
    import pytest
    with pytest.raises(ValueError, match="device"):
        D.init_distributed("tpu")


def _collectives(rank, world_size):
    ctx = D.init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, world_size, "gloo")
    # uneven sizes: rank r contributes r + 1 rows of value r
    gathered = D.all_gather_cat(torch.full((rank + 1, 2), float(rank)), ctx)
    expected = torch.cat([torch.full((r + 1, 2), float(r)) for r in range(world_size)])
    assert torch.equal(gathered, expected)
    assert torch.equal(D.all_reduce_mean(torch.tensor([float(rank)]), ctx), torch.tensor([0.5]))
    # DDP averages gradients: the step equals one process on the concatenated batch
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    reference = nn.Linear(3, 1)
    reference.load_state_dict(model.state_dict())
    ddp = D.wrap_model(model, ctx)
    assert ddp.module is model
    data = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    ddp(data[rank * 4:(rank + 1) * 4]).pow(2).mean().backward()
    reference(data).pow(2).mean().backward()
    assert torch.allclose(model.weight.grad, reference.weight.grad, atol=1e-6)
    D.barrier(ctx)
    D.cleanup(ctx)


def test_collectives_on_two_processes():
    run_ranks(_collectives, 2)
