"""Training: losses go down, the parallel teacher-forced forward equals the sequential (oracle-style)
one, DDP replicas stay identical, and a killed + resumed run ends with the same weights."""
import dataclasses
import json
import os
import socket

import pytest
import torch

from models import small_config, small_model

from nuwa_fast import adc
from nuwa_fast.train import TrainOptions
from nuwa_fast.train import chain as chainlib
from nuwa_fast.train.nuwa_stage import NuwaTrainer, train_nuwa
from nuwa_fast.train.vq_stage import train_vq, vq_loss

FAST = dict(batch=2, warmup=1, lr=3e-3, log_every=1, progress=False, eval_every=-1, data="landscape")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _opts(tmp_path, name, **kw):
    return TrainOptions(out=str(tmp_path / name), **{**FAST, **kw})


@pytest.mark.parametrize("extent", [(1, 1, 1), (0, 2, 1), (0, 0, 0)])
@pytest.mark.parametrize("order", adc.BASIC_ORDERS)
def test_parallel_logits_equal_sequential(order, extent):
    model = small_model(extent=(1, 2, 2))
    dec = model.decoder
    grid = (3, 4)
    orde = adc.order(order, grid)
    g = torch.Generator().manual_seed(1)
    chain = torch.randint(model.cfg.vq.codebook_size, (2, len(orde), model.cfg.P), generator=g)
    text = model.encode_text(["a lake at night", ""])
    with torch.no_grad():
        par = chainlib.parallel_logits(dec, chain, chainlib.context(orde, extent, model.cfg.extent), text)
        seq = chainlib.sequential_logits(dec, chain, orde, extent, text)
    err = (par - seq).abs().max().item()
    print(f"order={order} extent={extent} max|parallel - sequential| = {err:.2e}")
    assert err < 1e-4


def test_context_matches_ncp_plan_and_extent_zero_is_empty():
    orde = adc.order("left", (3, 5))
    rel = chainlib.context(orde, (0, 1, 2), (1, 2, 2))
    own = adc.rel_index((0, 0, 0), (1, 2, 2))
    for i, (t, y, x) in enumerate(orde):
        for j, (tj, yj, xj) in enumerate(orde):
            d = (tj - t, yj - y, xj - x)
            want = own if i == j else (adc.rel_index(d, (1, 2, 2)) if j < i and abs(d[1]) <= 1 else -1)
            assert rel[i, j] == want
    rel0 = chainlib.context(orde, (0, 0, 0), (1, 2, 2))
    want0 = torch.full_like(rel0, -1)
    want0.fill_diagonal_(own)
    assert torch.equal(rel0, want0)


def test_vq_steps_lower_loss_on_fixed_batch():
    torch.manual_seed(0)
    model = small_model()
    vq = model.vq.train()
    img = torch.rand(4, 3, 16, 16) * 2 - 1
    img = torch.nn.functional.avg_pool2d(img, 3, 1, 1)                         # some structure
    opt = torch.optim.AdamW(vq.parameters(), 3e-3)
    losses = []
    for _ in range(30):
        loss, _, _ = vq_loss(vq, img)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print("vq loss", losses[0], "->", losses[-1])
    assert losses[-1] < 0.7 * losses[0]


def test_edge_weights_mark_the_edges_that_touch_earlier_patches():
    p = 3
    orde = adc.order("down", (2, 2))                       # (0,0,0) (0,0,1) (0,1,0) (0,1,1)
    w = chainlib.edge_weights(orde, p, 4.0).view(len(orde), p, p)
    assert torch.all(w[0] == 1)                            # the first patch has no earlier neighbour
    assert torch.all(w[1][:, 0] == 4) and torch.all(w[1][:, 1:] == 1)         # left neighbour only
    assert torch.all(w[2][0] == 4) and torch.all(w[2][1:] == 1)               # the one above only
    assert torch.all(w[3][0] == 4) and torch.all(w[3][:, 0] == 4) and w[3][1:, 1:].eq(1).all()
    up = chainlib.edge_weights(adc.order("up", (2, 2)), p, 2.0).view(4, p, p)
    assert torch.all(up[2][p - 1] == 2)                    # "up": the patch below came first
    clip = chainlib.edge_weights(adc.order(["down"] * 2, (2, 1, 1)), p, 2.0)
    assert torch.all(clip == 1)                            # frames alone: no spatial neighbour, no edge


def test_edge_weight_changes_the_loss_not_the_reported_ce():
    model = small_model(extent=(0, 1, 1))
    trainer = NuwaTrainer(model).eval()
    orde = adc.order("right", (2, 3))
    chain = torch.randint(model.cfg.vq.codebook_size, (2, len(orde), model.cfg.P), generator=torch.Generator().manual_seed(1))
    rel = chainlib.context(orde, model.cfg.extent, model.cfg.extent)
    with torch.no_grad():
        plain, ce = trainer("chain", chain, prompts := ["a lake", ""], rel=rel)
        ones, ce1 = trainer("chain", chain, prompts, rel=rel, weight=torch.ones(len(orde), model.cfg.P))
        heavy, ce2 = trainer("chain", chain, prompts, rel=rel, weight=chainlib.edge_weights(orde, model.cfg.patch, 5.0))
    assert torch.allclose(plain, ce) and torch.allclose(ones, plain) and torch.allclose(ce1, ce) and torch.allclose(ce2, ce)
    assert not torch.allclose(heavy, plain)


def test_edge_weight_option_is_checked():
    from nuwa_fast.train.cli import _edge_weight
    assert _edge_weight("2.5") == 2.5
    for bad in ("0.5", "x", "nan"):
        with pytest.raises(Exception, match="--edge-weight: expected a number >= 1"):
            _edge_weight(bad)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_nuwa_steps_lower_loss_on_fixed_batch(mode):
    model = small_model(extent=(0, 1, 1))
    trainer = NuwaTrainer(model).train()
    opt = torch.optim.AdamW(trainer.parameters(), 3e-3)
    orde = adc.order("right", (2, 3))
    g = torch.Generator().manual_seed(0)
    chain = torch.randint(8, (2, len(orde), model.cfg.P), generator=g)        # a few codes: learnable
    prompts = ["green hills", ""]
    rel = chainlib.context(orde, model.cfg.extent, model.cfg.extent)

    def eval_loss():
        with torch.no_grad():
            return trainer("chain", chain, prompts, rel=rel)[1].item()

    before = eval_loss()
    for _ in range(6):
        if mode == "parallel":
            loss, _ = trainer("chain", chain, prompts, rel=rel)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            from nuwa_fast.train.nuwa_stage import _render_and_optimize
            params = [p for p in trainer.parameters() if p.requires_grad]
            _render_and_optimize(trainer, opt, params, chain, prompts, orde, model.cfg, TrainOptions())
    after = eval_loss()
    print(f"{mode}: chain loss {before:.3f} -> {after:.3f}")
    assert after < 0.8 * before


@pytest.mark.parametrize("stage", ["vq", "nuwa"])
def test_resume_gives_identical_weights(tmp_path, stage):
    cfg = small_config(extent=(0, 1, 1))
    kw = dict(steps=4, save_every=2, sizes=(16, 24), restart_every=2, chains=((2, 2, 1.0), (1, 3, 1.0)))
    run = train_vq if stage == "vq" else train_nuwa
    whole = run(cfg, _opts(tmp_path, "whole", **kw))
    run(cfg, _opts(tmp_path, "split", stop_at=2, **kw))                      # "killed" after step 2
    resumed = run(cfg, _opts(tmp_path, "split", resume=True, **kw))
    a, b = _state(whole), _state(resumed)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    print(f"{stage}: max |whole - resumed| = {diff}")
    assert all(torch.equal(a[k], b[k]) for k in a)
    fresh = run(cfg, _opts(tmp_path, "other", steps=2, save_every=2, sizes=(16, 24), restart_every=2,
                           chains=((2, 2, 1.0),)))
    assert not all(torch.equal(a[k], _state(fresh)[k]) for k in a)          # training did something


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from safetensors.torch import save_file
    cfg = small_config(extent=(0, 1, 1))
    vq_model = train_vq(cfg, TrainOptions(out=f"{out}/vq", steps=3, save_every=3, sizes=(16,), restart_every=2,
                                          device="cpu", **FAST))
    save_file({k: v.contiguous() for k, v in vq_model.vq.state_dict().items()}, f"{out}/vq_rank{rank}.safetensors")
    nuwa = train_nuwa(cfg, TrainOptions(out=f"{out}/nuwa", steps=3, save_every=3, vq=f"{out}/vq/last.safetensors",
                                        chains=((2, 2, 1.0),), device="cpu", **FAST))
    save_file({k: v.contiguous() for k, v in nuwa.decoder.state_dict().items()}, f"{out}/dec_rank{rank}.safetensors")
    dist.destroy_process_group()


def test_ddp_two_gloo_processes_keep_replicas_identical(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for name in ("vq", "dec"):
        r0, r1 = (load_file(str(tmp_path / f"{name}_rank{r}.safetensors")) for r in (0, 1))
        diff = max((r0[k] - r1[k]).abs().max().item() for k in r0)
        print(f"{name}: max |rank0 - rank1| = {diff}")
        assert all(torch.equal(r0[k], r1[k]) for k in r0)


def test_train_nuwa_sequential_mode_runs(tmp_path):
    model = train_nuwa(small_config(extent=(0, 1, 1)),
                       _opts(tmp_path, "seq", steps=2, batch=1, save_every=2, mode="sequential", chains=((2, 2, 1.0),)))
    assert (tmp_path / "seq" / "last.safetensors").is_file()
    assert model.decoder.adc_bias.grad is not None


def test_cli_train_vq_then_eval(tmp_path, capsys):
    import json
    from nuwa_fast.train import cli
    out = tmp_path / "vq"
    assert cli.main(["vq", "--preset", "tiny", "--steps", "1", "--batch", "1", "--sizes", "16", "--out", str(out),
                     "--no-progress", "--eval-every", "-1", "--data", "landscape"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and "psnr" in rows[0]
    capsys.readouterr()
    assert cli.eval([str(out / "last.safetensors"), "--samples", "1", "--vq-samples", "1", "--chain", "1x2"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep["bits_per_token"]["per_order"]) == set(adc.BASIC_ORDERS)
    assert rep["vq"]["psnr"] > 0


def test_adc_bias_gets_its_own_fast_undecayed_group():
    from nuwa_fast.train import common
    from nuwa_fast.train.nuwa_stage import NuwaTrainer
    m = small_model()
    opt = common.make_adamw(NuwaTrainer(m).parameters(), 1e-3, 0.01, fast=[m.decoder.adc_bias], fast_scale=30)
    common.set_lr(opt, 2e-4)
    fast = [g for g in opt.param_groups if any(p is m.decoder.adc_bias for p in g["params"])]
    assert len(fast) == 1 and fast[0]["weight_decay"] == 0.0 and fast[0]["lr"] == pytest.approx(6e-3)
    assert len(fast[0]["params"]) == 1
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([2e-4, 2e-4, 6e-3])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == sum(p.numel() for p in NuwaTrainer(m).parameters() if p.requires_grad)


def test_decoder_only_gan_fine_tune_keeps_the_tokens(tmp_path):
    """--decoder-only --gan --gan-weight: the pixel decoder moves, the encoder and codebook (every token) do not."""
    from nuwa_fast.train import cli
    cfg = small_config()
    base = train_vq(cfg, _opts(tmp_path, "base", steps=2, save_every=2, sizes=(16,)))
    a = cli.build_parser().parse_args(["vq", "--decoder-only", "--gan", "--gan-start", "0", "--gan-weight", "0.5",
                                       "--gan-adaptive", "--init", str(tmp_path / "base" / "last.safetensors"),
                                       "--steps", "2", "--sizes", "16", "--out", str(tmp_path / "dec")])
    opt = cli.options_from_args(a)
    assert (opt.gan, opt.decoder_only, opt.gan_start, opt.gan_weight, opt.gan_adaptive) == (True, True, 0, 0.5, True)
    opt = dataclasses.replace(opt, **{**FAST, "save_every": 2})
    tuned = train_vq(cfg, opt)
    before, after = base.vq.state_dict(), tuned.vq.state_dict()
    fixed = [k for k in before if k.startswith(("encoder.", "quant_in.", "codebook"))]
    moved = [k for k in before if k.startswith("decoder.")]
    assert fixed and moved
    assert all(torch.equal(before[k], after[k]) for k in fixed)
    assert any(not torch.equal(before[k], after[k]) for k in moved)
    # The tokens are the same, so the init's vision decoder and text encoder come along unchanged: the
    # fine-tune's checkpoint is a complete model, not a new VQ with a freshly initialised decoder.
    init_rest = {k: v for k, v in base.state_dict().items() if not k.startswith("vq.")}
    tuned_rest = {k: v for k, v in tuned.state_dict().items() if not k.startswith("vq.")}
    assert init_rest.keys() == tuned_rest.keys() and init_rest
    assert all(torch.equal(init_rest[k], tuned_rest[k].to(init_rest[k].dtype)) for k in init_rest)
    # the adversarial terms are logged, with the adaptive weight (0.5 x the gradient balance, > 0)
    rows = [json.loads(line) for line in open(tmp_path / "dec" / "metrics.jsonl") if '"loss"' in line]
    assert rows and all(r["gan_weight"] > 0 and r["d_loss"] >= 0 for r in rows)


def test_cpu_bf16_falls_back_to_fp32_without_native_bf16(monkeypatch):
    """--cpu-bf16 on a CPU without AVX512-BF16/AMX (bf16 emulated, slower than fp32) runs fp32 and warns."""
    from nuwa_fast.train import common
    monkeypatch.setattr(common, "_warned_bf16", [])
    monkeypatch.setattr(common, "cpu_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no native bf16"):
        ctx = common.autocast(torch.device("cpu"), cpu_bf16=True)
    with ctx:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setattr(common, "cpu_native_bf16", lambda: True)
    with common.autocast(torch.device("cpu"), cpu_bf16=True):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with common.autocast(torch.device("cpu"), cpu_bf16=False):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("decoder_only", [False, True])
def test_vq_init_with_another_vq_config_is_refused_by_name(tmp_path, decoder_only):
    """train vq --init CKPT (a VQ to continue, or --decoder-only): a checkpoint whose VQ differs from the
    preset's is refused before any step, naming the flag and the file; the output folder stays empty."""
    train_vq(small_config(codebook=32), _opts(tmp_path, "other", steps=1, save_every=1, sizes=(16,)))
    init = tmp_path / "other" / "last.safetensors"
    opt = _opts(tmp_path, "new", steps=1, save_every=1, sizes=(16,))
    opt = dataclasses.replace(opt, init=str(init), decoder_only=decoder_only)
    with pytest.raises(ValueError, match=r"--init .*other.*VQ config differs"):
        train_vq(small_config(codebook=48), opt)
    assert not (tmp_path / "new" / "last.safetensors").exists()
