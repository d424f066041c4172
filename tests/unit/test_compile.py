"""What ``training.compile`` compiles has no graph breaks: ``torch._dynamo.explain`` (tracing only, no
code generation, so it is fast on a CPU) over the U-Nets, the MLP and the trainer's loss function for
every loss. A graph break splits the compiled step and, on CUDA, each piece is launched (and captured)
on its own; one from a value read back to the host is also a host synchronisation per step."""
import pytest
import torch

from scoresde.cli.factory import network_defaults, options_from_config
from scoresde.configs.digits.ddpmpp_vp import get_config as digits_config
from scoresde.configs.toy.gmm_vp import get_config as gmm_config
from scoresde.models.registry import get_model
from scoresde.run.distributed import DistContext
from scoresde.train import loop as trainer

TINY_UNET = dict(in_channels=1, image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


def graph_breaks(fn, *args) -> list[str]:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(fn)(*args)
    return [f"{b.reason.splitlines()[0]} at {b.user_stack[-1] if b.user_stack else '?'}"
            for b in explained.break_reasons]


@pytest.mark.parametrize("name", ["ddpmpp", "ncsnpp"])
def test_unet_forward_has_no_graph_breaks(name):
    net = get_model(name, **{**network_defaults(name), **TINY_UNET}).train()
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4) * 999
    assert graph_breaks(net, x, t) == []


def test_mlp_forward_has_no_graph_breaks():
    net = get_model("mlp", **{**network_defaults("mlp"), "dim": 2, "hidden": 16, "n_blocks": 2}).train()
    assert graph_breaks(net, torch.randn(8, 2), torch.rand(8) * 999) == []


def _loss_config(loss: str, image: bool):
    """A tiny run of ``loss``: the U-Net on 8x8 digits when ``image``, else the MLP on the toy mixture."""
    config = digits_config() if image else gmm_config()
    t, m = config.training, config.model
    t.loss, t.continuous = loss, loss in ("dsm", "flow", "edm")
    t.likelihood_weighting = t.importance_sampling = False
    t.sde = {"smld": "vesde", "flow": "rectified_flow", "edm": "edm"}.get(loss, "vpsde")
    m.parameterization, m.embedding_type = "auto", "positional"
    t.batch_size, t.progress_bar, t.tensorboard = 8, False, False
    if image:
        m.nf, m.num_res_blocks = 8, 1
    else:
        config.data.num_train, m.hidden, m.n_blocks = 64, 16, 1
    return config


@pytest.mark.parametrize("loss,image", [("dsm", True), ("dsm", False), ("ddpm", False), ("smld", False),
                                        ("v", False), ("flow", False), ("edm", False)])
def test_training_loss_has_no_graph_breaks(tmp_path, loss, image):
    run = trainer.setup_run(options_from_config(_loss_config(loss, image)), tmp_path, DistContext())
    try:
        x, labels = trainer.next_batch(run)
        noise = trainer.loss_noise(run, x)
        assert graph_breaks(trainer.loss_function(run), x, noise, labels) == []
    finally:
        run.metrics.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs are observable on CUDA only")
@pytest.mark.parametrize("compile_step", [False, True])
def test_train_step_does_not_synchronise_on_cuda(tmp_path, compile_step):
    # the trainer's step between log boundaries: batch, noise, forward, backward, clipping, Adam, EMA and
    # the non-finite guard, all without waiting for the device
    config = _loss_config("dsm", image=True)
    config.device, config.training.compile = "cuda", compile_step
    run = trainer.setup_run(options_from_config(config), tmp_path, DistContext())
    try:
        for _ in range(trainer.CapturedGradientStep.WARMUP + 2):  # warm-up, compilation or capture
            trainer.train_step(run, *trainer.next_batch(run))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            losses = [trainer.train_step(run, *trainer.next_batch(run)) for _ in range(5)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(torch.stack(losses)).all() and trainer.check_skipped_updates(run) == 0
    finally:
        run.metrics.close()
