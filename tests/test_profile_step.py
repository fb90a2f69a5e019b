"""benchmarks/step_roles.py and benchmarks/profile_step.py on a CPU: which role each module and
kernel gets, how profiled time is attributed, the per-role memory bookkeeping (with a stand-in
allocator), the result files, and one end-to-end run on the tiny model."""
import json
import os

import pytest
import torch
from torch import nn

from benchmarks import harness, profile_step, step_roles
from benchmarks.step_roles import (ATTENTION_UNSCOPED, CONV, CROSS, ELEMENTWISE, FEED_FORWARD, GAP, MATMUL, NORM,
                                   OTHER, SPATIAL, TEMPORAL)

BLOCK = "down_blocks.0.attentions.0.transformer_blocks.0"


@pytest.mark.parametrize("path, types, cross, role", [
    ("down_blocks.0.motion_modules.0", ["AnimateDiffTransformer3D", "ModelMixin", "Module"], None, TEMPORAL),
    ("transformer_in", ["TransformerTemporalModel", "Module"], None, TEMPORAL),
    # the attention modules of a motion module are named attn1/attn2 too: the path makes them temporal
    ("down_blocks.0.motion_modules.0.transformer_blocks.0.attn1", ["Attention", "Module"], False, TEMPORAL),
    (f"{BLOCK}.attn_temp", ["Attention", "Module"], False, TEMPORAL),
    (f"{BLOCK}.attn1", ["Attention", "Module"], None, SPATIAL),
    (f"{BLOCK}.attn2", ["Attention", "Module"], None, CROSS),
    (f"{BLOCK}.attn2", ["Attention", "Module"], False, SPATIAL),   # double self-attention: the flag wins
    (f"{BLOCK}.attn1", ["Attention", "Module"], True, CROSS),
    ("down_blocks.0.resnets.0.conv1", ["Conv2d", "_ConvNd", "Module"], None, CONV),
    ("down_blocks.0.resnets.0.norm1", ["FramePooledGroupNorm", "GroupNorm", "Module"], None, NORM),
    (f"{BLOCK}.norm3", ["LayerNorm", "Module"], None, NORM),
    (f"{BLOCK}.ff", ["FeedForward", "Module"], None, FEED_FORWARD),
    (f"{BLOCK}.ff.net.0", ["GEGLU", "Module"], None, FEED_FORWARD),
    ("down_blocks.0.resnets.0", ["ResnetBlock2D", "Module"], None, None),
    ("time_embedding.linear_1", ["Linear", "Module"], None, None),
    (BLOCK, ["BasicTransformerBlock", "Module"], None, None),
])
def test_module_role(path, types, cross, role):
    assert step_roles.module_role(path, types, cross) == role


def test_role_of_reads_live_diffusers_modules():
    from diffusers.models.attention_processor import Attention
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    text = Attention(query_dim=8, cross_attention_dim=16, heads=2, dim_head=4)
    assert step_roles.role_of("blocks.0.attn1", text) == CROSS  # is_cross_attention, not the name
    assert step_roles.role_of("blocks.0.attn1", Attention(query_dim=8, heads=2, dim_head=4)) == SPATIAL
    motion = AnimateDiffTransformer3D(num_attention_heads=2, attention_head_dim=4, in_channels=8, norm_num_groups=4)
    roles = {path: step_roles.role_of(path, m) for path, m in motion.named_modules()}
    assert roles[""] == TEMPORAL
    assert roles["transformer_blocks.0.attn1"] == SPATIAL  # on its own; the container rule decides in a profile
    assert step_roles.outermost(roles.items()) == [("", TEMPORAL)]


@pytest.mark.parametrize("scopes, role", [
    ([], None),
    ([CROSS], CROSS),
    ([SPATIAL, NORM], NORM),                 # innermost wins ...
    ([TEMPORAL, SPATIAL, NORM], TEMPORAL),   # ... except inside a container
    ([FEED_FORWARD, TEMPORAL], TEMPORAL),
])
def test_scope_role(scopes, role):
    assert step_roles.scope_role(scopes) == role


@pytest.mark.parametrize("name, role", [
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", CONV),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__half>", CONV),
    ("aten::mkldnn_convolution", CONV),
    ("ampere_fp16_s16816gemm_fp16_128x128_ldg8_f2f_stages_32x5_tn", MATMUL),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopA_TNT", MATMUL),
    ("aten::addmm", MATMUL),
    ("_temporal_attention_forward_kernel", TEMPORAL),
    ("_frame_attention_forward_kernel", SPATIAL),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<40, 128, 64, 4>>", ATTENTION_UNSCOPED),
    ("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<c10::Half, float>", NORM),
    ("aten::native_group_norm", NORM),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::silu_kernel(at::TensorIteratorBase&)>",
     ELEMENTWISE),
    ("Memcpy DtoD (Device -> Device)", ELEMENTWISE),
    ("aten::_to_copy", ELEMENTWISE),
    ("some_unknown_kernel", OTHER),
])
def test_kernel_role(name, role):
    assert step_roles.kernel_role(name) == role


def test_scope_names_round_trip_and_reject_other_events():
    name = step_roles.scope_name(CROSS, "up_blocks.1.attentions.0.transformer_blocks.0.attn2")
    assert step_roles.parse_scope(name) == (CROSS, "up_blocks.1.attentions.0.transformer_blocks.0.attn2")
    assert step_roles.parse_scope("aten::mm") is None
    assert step_roles.parse_scope("role:not a role:x") is None


def test_outermost_keeps_modules_without_a_role_ancestor():
    named = [("a", TEMPORAL), ("a.attn1", SPATIAL), ("ab", NORM), ("c", None), ("c.conv", CONV), ("c.conv.x", NORM)]
    assert step_roles.outermost(named) == [("a", TEMPORAL), ("ab", NORM), ("c.conv", CONV)]


# ----------------------------------------------------------------------------------------------
class AnimateDiffTransformer3D(nn.Module):
    """Named as diffusers' motion module, so it classifies as a temporal-attention container."""

    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x):
        return self.norm(x) * 2


class ToyUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.motion_modules = nn.ModuleList([AnimateDiffTransformer3D()])
        self.time_proj = nn.Linear(8, 8)  # no role of its own: its matmul is named by the fallback

    def forward(self, x):
        x = self.motion_modules[0](self.norm(self.conv_in(x)))
        return self.time_proj(x.mean((2, 3)))


def test_attribute_uses_scopes_containers_and_the_name_fallback():
    model = ToyUNet()
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad(), step_roles.RoleScopes([model]):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            model(x)
    breakdown = profile_step.attribute(profiler.events(), "cpu")
    by_kernel = breakdown.kernel_us
    assert any(role == CONV and "conv" in name for name, role in by_kernel)
    norms = {role for name, role in by_kernel if name == "aten::native_group_norm"}
    assert norms == {NORM, TEMPORAL}  # the top-level norm, and the one inside the motion module
    assert any(role == MATMUL for name, role in by_kernel if name in ("aten::addmm", "aten::mm"))
    assert breakdown.total_us == pytest.approx(sum(breakdown.role_us.values()))
    # the scopes are gone after the context: a second profile has no role ranges
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as again:
        model(x)
    assert not [e for e in again.events() if step_roles.parse_scope(e.name)]


class FakeEvent:
    """The fields of ``torch.autograd.profiler_util.FunctionEvent`` that ``attribute`` reads."""

    def __init__(self, name, parent=None, kernels=(), device_us=0.0, device=False, annotation=False):
        from torch.autograd import DeviceType
        from torch.autograd.profiler_util import Interval, Kernel

        self.name, self.cpu_parent, self.is_user_annotation = name, parent, annotation
        self.device_type = DeviceType.CUDA if device else DeviceType.CPU
        self.kernels = [Kernel(kernel, 0, us) for kernel, us in kernels]
        self.time_range = Interval(0.0, device_us)
        self.is_python_function = False
        self.self_cpu_time_total = 0.0


def test_attribute_on_cuda_links_kernels_to_scopes_and_names_the_rest():
    """The CUDA path, with stand-in events: no GPU needed to check the bookkeeping."""
    motion = FakeEvent(step_roles.scope_name(TEMPORAL, "down_blocks.0.motion_modules.0"), annotation=True)
    norm = FakeEvent(step_roles.scope_name(NORM, "down_blocks.0.motion_modules.0.norm"), motion, annotation=True)
    conv = FakeEvent(step_roles.scope_name(CONV, "conv_in"), annotation=True,
                     kernels=[("triton_conv_from_python", 7.0)])  # launched with no operator around it
    events = [motion, norm, conv,
              FakeEvent("aten::native_group_norm", norm, kernels=[("group_norm_kernel", 10.0)]),
              FakeEvent("aten::add", kernels=[("vectorized_elementwise_kernel_add", 3.0)]),
              FakeEvent("group_norm_kernel", device=True, device_us=10.0),
              FakeEvent("triton_conv_from_python", device=True, device_us=7.0),
              FakeEvent("vectorized_elementwise_kernel_add", device=True, device_us=3.0),
              FakeEvent("ampere_fp16_s16816gemm_unlinked", device=True, device_us=5.0),
              FakeEvent(conv.name, device=True, device_us=20.0, annotation=True)]  # a range's GPU projection
    breakdown = profile_step.attribute(events, "cuda")
    assert breakdown.role_us == {TEMPORAL: 10.0, CONV: 7.0, ELEMENTWISE: 3.0, MATMUL: 5.0}
    assert breakdown.kernel_calls[("ampere_fp16_s16816gemm_unlinked", MATMUL)] == 1


def test_rows_gap_and_plot(tmp_path):
    breakdown = profile_step.Breakdown(role_us={CONV: 6000.0, TEMPORAL: 2500.0},
                                       kernel_us={("conv_kernel", CONV): 6000.0, ("attn", TEMPORAL): 2500.0},
                                       kernel_calls={("conv_kernel", CONV): 3, ("attn", TEMPORAL): 2})
    rows = profile_step.rows_of("animatediff", "default", 16, profile_step.FULL, 10.0, 14.0, breakdown, top=1)
    rows += profile_step.rows_of("animatediff", "vidgen", 16, profile_step.FULL, 5.0, 7.0, breakdown, top=5)
    profile_step.add_speedups(rows)
    steps = [r for r in rows if r["kind"] == "step"]
    assert [s["speedup"] for s in steps] == [1.0, 2.0]
    roles = {(r["side"], r["role"]): r["ms"] for r in rows if r["kind"] == "role"}
    assert roles[("default", GAP)] == pytest.approx(10.0 - 8.5)
    assert roles[("vidgen", GAP)] == 0.0  # kernels longer than the wall (concurrent streams): no negative gap
    kernels = [r for r in rows if r["kind"] == "kernel"]
    assert [(k["side"], k["kernel"]) for k in kernels] == [("default", "conv_kernel"), ("vidgen", "conv_kernel"),
                                                          ("vidgen", "attn")]
    # on a CPU (no unprofiled wall time) the profiled step is the reference
    cpu = profile_step.rows_of("tune-a-video", "default", 8, profile_step.TINY, None, 9.0, breakdown, top=0)
    assert cpu[0]["wall_ms"] == 9.0 and cpu[0]["wall_source"] == "profiled"

    env = {"date": "2026-11-30T00:00:00+00:00", "gpu": None}
    stem = harness.write_results("profile_step", rows, env, results_dir=str(tmp_path))
    png = profile_step.plot_roles(stem, rows, "test")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(stem + ".csv") as f:
        header = f.readline().strip().split(",")
    assert {"case", "side", "kind", "role", "ms", "wall_ms", "env_date"} <= set(header)
    with open(stem + ".json") as f:
        assert json.load(f)["benchmark"] == "profile_step"


# ----------------------------------------------------------------------------------------------
class FakeAllocator:
    """CUDA's allocated/peak counters, driven by the test instead of a GPU."""

    def __init__(self, resident: int):
        self.allocated = self.peak = resident

    def alloc(self, n: int) -> None:
        self.allocated += n
        self.peak = max(self.peak, self.allocated)

    def free(self, n: int) -> None:
        self.allocated -= n

    def install(self, monkeypatch) -> None:
        monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: self.allocated)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: self.peak)
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: setattr(self, "peak", self.allocated))


class Attention(nn.Module):
    """Named as diffusers' attention: allocates ``transient`` bytes while it runs."""

    def __init__(self, allocator, transient):
        super().__init__()
        self.allocator, self.transient = allocator, transient

    def forward(self, x):
        self.allocator.alloc(self.transient)
        self.allocator.free(self.transient)
        return x


class Conv2d(nn.Conv2d):
    def __init__(self, allocator, transient):
        super().__init__(1, 1, 1)
        self.allocator, self.transient = allocator, transient

    def forward(self, x):
        self.allocator.alloc(self.transient)
        self.allocator.free(self.transient)
        return x


class MemoryUNet(nn.Module):
    def __init__(self, allocator):
        super().__init__()
        self.allocator = allocator
        self.attn1 = Attention(allocator, 50)
        self.conv = Conv2d(allocator, 300)

    def forward(self, x):
        self.allocator.alloc(100)  # an activation held across both layers
        x = self.conv(self.attn1(x))
        self.allocator.free(100)
        return x


def test_loop_memory_counts_the_loop_only_and_each_role(monkeypatch):
    allocator = FakeAllocator(resident=1000)
    allocator.install(monkeypatch)
    unet = MemoryUNet(allocator)
    with step_roles.LoopMemory([unet], [unet]) as memory:
        allocator.alloc(5000)  # text encoding before the loop: not the loop's
        allocator.free(5000)
        for _ in range(2):
            unet(torch.zeros(1))
    assert memory.resident_bytes == 1000
    assert memory.loop_peak_bytes == 100 + 300  # the held activation plus the convolution's transient
    assert memory.role_peak_bytes == {SPATIAL: 50, CONV: 300}
    assert not unet._forward_pre_hooks and not unet.conv._forward_hooks  # hooks removed


def test_loop_memory_without_a_loop_reports_none(monkeypatch):
    FakeAllocator(resident=10).install(monkeypatch)
    with step_roles.LoopMemory([nn.Identity()]) as memory:
        pass
    assert memory.loop_peak_bytes is None and memory.role_peak_bytes == {}


# ----------------------------------------------------------------------------------------------
def test_cpu_needs_the_tiny_model():
    with pytest.raises(SystemExit):
        profile_step.main(["--device", "cpu"])


def test_profile_step_end_to_end_on_the_tiny_model(tmp_path, capsys):
    """Every case (svd-xt is svd with more frames: left out), both sides, one profiled step each; every
    kernel listed (--top 1000)."""
    from vidgen.ops import use_backend

    cases = [case for case in profile_step.CASES if case != "svd-xt"]
    with use_backend("torch"):  # the PyTorch reference of vidgen's ops: the interpreter would take minutes
        assert profile_step.main(["--device", "cpu", "--tiny", "--top", "1000", "--out", str(tmp_path),
                                  "--cases", *cases]) == 0
    [json_file] = [f for f in os.listdir(tmp_path) if f.endswith(".json")]
    stem = os.path.join(tmp_path, json_file[:-5])
    assert os.path.exists(stem + ".csv") and os.path.exists(stem + ".png")
    with open(stem + ".json") as f:
        rows = json.load(f)["rows"]
    steps = {(r["case"], r["side"]): r for r in rows if r["kind"] == "step"}
    assert set(steps) == {(c, s) for c in cases for s in profile_step.SIDES}
    for (case, side), step in steps.items():
        roles = {r["role"]: r["ms"] for r in rows if r["kind"] == "role" and (r["case"], r["side"]) == (case, side)}
        assert step["wall_ms"] > 0 and step["kernel_ms"] > 0
        # the roles and the gap account for the whole step (the gap is never negative)
        assert sum(roles.values()) == pytest.approx(max(step["wall_ms"], step["kernel_ms"]), rel=1e-6)
        assert roles[CONV] > 0 and roles[NORM] > 0
    kernels = [r for r in rows if r["kind"] == "kernel"]

    def sides_running(prefix):
        return {(r["case"], r["side"], r["role"]) for r in kernels if r["kernel"].startswith(prefix)}

    # vidgen's attention ops run on the vidgen side only, inside the scope of the role they serve
    assert sides_running("vidgen::temporal_attention") == {("animatediff", "vidgen", TEMPORAL),
                                                           ("tune-a-video", "vidgen", TEMPORAL),
                                                           ("animatediff-free-noise", "vidgen", TEMPORAL),
                                                           ("svd", "vidgen", TEMPORAL)}
    assert sides_running("vidgen::frame_attention") == {("tune-a-video", "vidgen", SPATIAL)}
    assert "launch gaps / CPU-bound" in capsys.readouterr().out
