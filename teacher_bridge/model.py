"""MambaIRv2-Light in PyTorch (Guo et al., "MambaIRv2: Attentive State Space Restoration", 2025).

A re-implementation that loads the official checkpoints of csguoh/MambaIR
(`mambairv2_lightSR_x{2,3,4}.pth`) strictly: module attribute names and Sequential indices follow
the official state_dict keys. The selective scan is `teacher_bridge.scan.selective_scan` (pure
PyTorch), so the model runs on CPU and CUDA without mamba_ssm.

Deviations from the official code, all about determinism (see
../shared/reference/mambairv2_light.md, 7):
- Routing. The official ASSM draws Gumbel noise at inference too. `routing="gumbel"` keeps that;
  with `seeds=None` it consumes torch's global RNG exactly like the official code (one (B, L,
  num_tokens) draw per layer, in layer order), so `torch.manual_seed(s)` before a forward reproduces
  an official run on the same device. With `seeds=[...]` each batch item draws from its own
  generator, so an item's output does not depend on what else is in the batch. `routing="argmax"`
  takes the most likely class: deterministic.
- Token sort. The tokens are sorted by class with a stable sort (`stable_sort=True`), which is what
  CUDA's sort does at these sizes, so results do not depend on the device's sort.
  `stable_sort=False` reproduces the official code on CPU.
"""
import dataclasses
import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from teacher_bridge.scan import selective_scan

ROUTING_MODES = ("gumbel", "argmax")
RGB_MEAN = (0.4488, 0.4371, 0.4040)  # DIV2K mean, hard-coded in the official model


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Hyper-parameters of `MambaIRv2Light` (the `network_g` block of the official yml files).

    Attributes:
        upscale: super-resolution factor.
        embed_dim: feature channels C.
        d_state: SSM state size N.
        depths: AttentiveLayers per ASSB group.
        num_heads: attention heads per group (C must be a multiple).
        window_size: attention window side; also the input padding multiple.
        inner_rank: rank of the factorised prompt pool.
        num_tokens: prompt pool size = number of routing classes.
        mlp_ratio: GatedMLP and ASSM hidden width relative to C.
        img_range: input scaling after the mean is removed.
    """
    upscale: int = 3
    embed_dim: int = 48
    d_state: int = 8
    depths: tuple = (5, 5, 5, 5)
    num_heads: tuple = (4, 4, 4, 4)
    window_size: int = 16
    inner_rank: int = 32
    num_tokens: int = 64
    mlp_ratio: float = 1.0
    img_range: float = 1.0


CONFIGS = {
    # The official light configurations differ only in the upscale factor.
    "light_x2": TeacherConfig(upscale=2),
    "light_x3": TeacherConfig(upscale=3),
    "light_x4": TeacherConfig(upscale=4),
    # Tiny variant for fast tests of code paths that do not need the released weights.
    "smoke": TeacherConfig(embed_dim=24, depths=(2,), num_heads=(2,), window_size=8, inner_rank=8,
                           num_tokens=8),
}
DEFAULT_CONFIG = "light_x3"
DEFAULT_SEED = 1234  # per-image Gumbel seed unless the caller chooses one


def _trunc_normal_(tensor, std=0.02):
    return nn.init.trunc_normal_(tensor, std=std, a=-2.0, b=2.0)


def relative_position_index(window_size):
    """Returns the (ws*ws, ws*ws) int64 index into the (2ws-1)^2 relative-position bias table.

    Entry (i, j) encodes (dy, dx) = position of token i minus position of token j inside a window
    (raster order) as (dy + ws - 1) * (2ws - 1) + (dx + ws - 1).
    """
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window_size - 1
    dx = xs[:, None] - xs[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def window_partition(x, window_size):
    """(B, h, w, c) -> (B * windows, ws * ws, c); windows in raster order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // window_size, window_size, w // window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, c)


def window_reverse(windows, window_size, h, w):
    """Inverse of `window_partition`: (B * windows, ws * ws, c) -> (B, h, w, c)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window_size, w // window_size, window_size, window_size, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def shift_attention_mask(h, w, window_size, device=None):
    """Swin mask for the shifted windows of a padded (h, w) map: (windows, ws*ws, ws*ws), 0 or -100.

    After the cyclic shift by ws/2, a window may hold tokens from up to 3 x 3 regions that are not
    neighbours in the image; tokens of different regions must not attend to each other.
    """
    shift = window_size // 2

    def bands(size):
        pos = torch.arange(size, device=device)
        return (pos >= size - window_size).long() + (pos >= size - shift).long()

    region = bands(h)[:, None] * 3 + bands(w)[None, :]
    region = window_partition(region.view(1, h, w, 1), window_size).squeeze(-1)
    same = region[:, :, None] == region[:, None, :]
    return torch.zeros(same.shape, device=device).masked_fill_(~same, -100.0)


def tokens_to_image(x, hw):
    """(B, h*w, C) tokens -> (B, C, h, w) image; a channels-last view when x is contiguous."""
    return x.reshape(x.shape[0], *hw, x.shape[-1]).permute(0, 3, 1, 2)


def image_to_tokens(x):
    """(B, C, h, w) image -> (B, h*w, C) tokens; a view when x is in channels-last memory."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def mirror_pad(x, multiple):
    """Pads (B, C, H, W) at the bottom/right to multiples of `multiple`, mirroring with edge repeat.

    Appended row H + k is row H - 1 - k (numpy 'symmetric'), as the official model does; the same
    then for columns.

    Raises:
        ValueError: a side is shorter than the padding it needs (i.e. below 8 for windows of 16).
    """
    size = x.shape[-2:]
    pads = [-s % multiple for s in size]
    for s, p in zip(size, pads):
        if p > s:
            raise ValueError(f"input of size {tuple(size)} is too small: each side must be at "
                             f"least {multiple - multiple // 2} pixels (the mirror padding to a "
                             f"multiple of {multiple} cannot supply {p} rows/columns from {s})")
    for dim, (s, p) in zip((2, 3), zip(size, pads)):
        if p:
            idx = torch.cat([torch.arange(s), torch.arange(s - 1, s - 1 - p, -1)]).to(x.device)
            x = x.index_select(dim, idx)
    return x


class WindowAttention(nn.Module):
    """Multi-head self-attention in windows with a learned relative-position bias (`win_mhsa`)."""

    def __init__(self, dim, window_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.relative_position_bias_table = nn.Parameter(
            _trunc_normal_(torch.zeros((2 * window_size - 1) ** 2, num_heads)))
        self.proj = nn.Linear(dim, dim)

    def forward(self, qkv, rpi, grid, mask=None):
        """Args: qkv (B*windows, n, 3C) as [q | k | v], each head-major, windows in raster order;
        rpi (n, n) int64; grid the (rows, columns) of windows; mask (windows, n, n) or None.
        Returns: (B*windows, n, C)."""
        bw, n, c3 = qkv.shape
        heads = self.num_heads
        q, k, v = qkv.view(bw, n, 3, heads, c3 // 3 // heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[rpi.view(-1)].view(n, n, heads)
        bias = bias.permute(2, 0, 1).contiguous()  # (heads, n, n)
        # PyTorch's fused attention (scale 1/sqrt(head_dim), as the official model) avoids
        # materialising the scores; its fast CPU path needs 4-D inputs and a mask of that rank.
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.expand(bw, -1, -1, -1))
            return self.proj(out.transpose(1, 2).reshape(bw, n, -1))
        # The shift mask is zero except in the last window row and column (where the cyclic shift
        # wrapped the map around), and equal along that row and that column. Attending in these
        # four groups of windows with one broadcast mask each avoids a (windows, heads, n, n) mask.
        rows, cols = grid
        q, k, v = (t.unflatten(0, (-1, rows, cols)) for t in (q, k, v))
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
        for r, c in itertools.product((slice(0, rows - 1), slice(rows - 1, rows)),
                                      (slice(0, cols - 1), slice(cols - 1, cols))):
            group = [t[:, r, c].flatten(0, 2) for t in (q, k, v)]
            if group[0].shape[0]:
                group_mask = bias + mask[r.start * cols + c.start]
                out[:, r, c] = F.scaled_dot_product_attention(
                    *group, attn_mask=group_mask.expand(group[0].shape[0], -1, -1, -1)
                ).unflatten(0, (-1, r.stop - r.start, c.stop - c.start))
        return self.proj(out.flatten(0, 2).transpose(1, 2).reshape(bw, n, -1))


class Gate(nn.Module):
    """Spatial gate of the GatedMLP (`sg`): LayerNorm then a 5x5 depthwise conv, no activation."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim)

    def forward(self, x, hw):
        return image_to_tokens(self.conv(tokens_to_image(self.norm(x), hw)))


class GatedMLP(nn.Module):
    """fc1 -> GELU -> split in halves (a, b) -> a * Gate(b) -> fc2 (`convffn1`, `convffn2`)."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.sg = Gate(hidden // 2)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x, hw):
        a, b = F.gelu(self.fc1(x)).chunk(2, dim=-1)
        return self.fc2(a * self.sg(b, hw))


class SelectiveScan(nn.Module):
    """Parameters of the single-direction selective scan (`assm.selectiveScan`).

    The leading axis of size 1 on the projections is the official layout (one scan direction).
    """

    def __init__(self, d_inner, d_state):
        super().__init__()
        self.d_state = d_state
        self.dt_rank = math.ceil(d_inner / 16)
        fan = self.dt_rank + 2 * d_state
        bound = 1.0 / math.sqrt(d_inner)  # nn.Linear's default init, as the official code keeps
        self.x_proj_weight = nn.Parameter(torch.empty(1, fan, d_inner).uniform_(-bound, bound))
        dt_bound = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(
            torch.empty(1, d_inner, self.dt_rank).uniform_(-dt_bound, dt_bound))
        # Bias = softplus^-1(dt), dt log-uniform in [1e-3, 0.1]: initial time steps span scales.
        dt = torch.exp(torch.rand(d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        dt = dt.clamp(min=1e-4)
        self.dt_projs_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).unsqueeze(0))
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(d_inner))

    def forward(self, u, prompt):
        """Args: u (B, L, D) sequence, prompt (B, L, N) added to C. Returns: (B, L, D) float32."""
        proj = torch.matmul(u, self.x_proj_weight[0].t())
        dts, bs, cs = proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(dts, self.dt_projs_weight[0].t())
        return selective_scan(u, delta, -torch.exp(self.A_logs.float()), bs, cs + prompt, self.Ds,
                              self.dt_projs_bias[0])


class ASSM(nn.Module):
    """Attentive state-space module: routes tokens to prompt classes, scans them by class."""

    def __init__(self, dim, d_state, num_tokens, inner_rank, mlp_ratio):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.selectiveScan = SelectiveScan(hidden, d_state)
        self.out_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, dim)
        self.in_proj = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.CPE = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden))
        self.embeddingB = nn.Embedding(num_tokens, inner_rank)
        nn.init.uniform_(self.embeddingB.weight, -1 / num_tokens, 1 / num_tokens)
        self.route = nn.Sequential(nn.Linear(dim, dim // 3), nn.GELU(),
                                   nn.Linear(dim // 3, num_tokens), nn.LogSoftmax(dim=-1))

    def forward(self, x, hw, embedding_a, ctx):
        """Args: x (B, L, C) normalised tokens in raster order; hw the (h, w) grid; embedding_a the
        layer's (inner_rank, N) prompt factor; ctx the forward's `_Context`. Returns: (B, L, C)."""
        b, n, c = x.shape
        classes = ctx.router(self.route(x))
        # Each token's prompt is the pool row of its class. Quirk of the official code: the prompt
        # goes into the scan in raster order while the tokens are re-ordered by class.
        prompt = (self.embeddingB.weight @ embedding_a)[classes]
        order = torch.sort(classes, dim=-1, stable=ctx.stable_sort).indices
        z = self.in_proj(tokens_to_image(x, hw))
        z = image_to_tokens(z * torch.sigmoid(self.CPE(z)))
        index = order.unsqueeze(-1).expand(-1, -1, z.shape[-1])
        y = self.out_proj(self.out_norm(self.selectiveScan(z.gather(1, index), prompt)))
        return torch.empty_like(y).scatter_(1, index, y)


class AttentiveLayer(nn.Module):
    """Window attention + GatedMLP, then ASSM + GatedMLP, with the official double shortcuts."""

    def __init__(self, cfg, num_heads, shift):
        super().__init__()
        dim = cfg.embed_dim
        self.window_size, self.shift = cfg.window_size, shift
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))
        self.scale1 = nn.Parameter(torch.full((dim,), 1e-4))
        self.scale2 = nn.Parameter(torch.full((dim,), 1e-4))
        self.wqkv = nn.Linear(dim, 3 * dim)
        self.win_mhsa = WindowAttention(dim, cfg.window_size, num_heads)
        self.assm = ASSM(dim, cfg.d_state, cfg.num_tokens, cfg.inner_rank, cfg.mlp_ratio)
        hidden = int(dim * cfg.mlp_ratio)
        self.convffn1 = GatedMLP(dim, hidden)
        self.convffn2 = GatedMLP(dim, hidden)
        self.embeddingA = nn.Embedding(cfg.inner_rank, cfg.d_state)
        nn.init.uniform_(self.embeddingA.weight, -1 / cfg.inner_rank, 1 / cfg.inner_rank)

    def forward(self, x, hw, ctx):
        b, n, c = x.shape
        h, w = hw
        qkv = self.wqkv(self.norm1(x)).view(b, h, w, 3 * c)
        if self.shift:
            qkv = torch.roll(qkv, shifts=(-self.shift, -self.shift), dims=(1, 2))
        grid = (h // self.window_size, w // self.window_size)
        attn = self.win_mhsa(window_partition(qkv, self.window_size), ctx.rpi, grid,
                             ctx.shift_mask if self.shift else None)
        attn = window_reverse(attn, self.window_size, h, w)
        if self.shift:
            attn = torch.roll(attn, shifts=(self.shift, self.shift), dims=(1, 2))
        u = attn.reshape(b, n, c) + x
        u = self.convffn1(self.norm2(u), hw) + u
        x1 = x * self.scale1 + u
        v = self.assm(self.norm3(x1), hw, self.embeddingA.weight, ctx) + x1
        return x1 * self.scale2 + v + self.convffn2(self.norm4(v), hw)


class ResidualGroup(nn.Module):
    """The AttentiveLayers of one ASSB; odd layers use shifted windows."""

    def __init__(self, cfg, depth, num_heads):
        super().__init__()
        self.layers = nn.ModuleList(
            AttentiveLayer(cfg, num_heads, shift=0 if i % 2 == 0 else cfg.window_size // 2)
            for i in range(depth))

    def forward(self, x, hw, ctx):
        for layer in self.layers:
            x = layer(x, hw, ctx)
        return x


class ASSB(nn.Module):
    """Attentive state-space block: a residual group, a 3x3 conv, and a shortcut (`layers.i`)."""

    def __init__(self, cfg, depth, num_heads):
        super().__init__()
        self.residual_group = ResidualGroup(cfg, depth, num_heads)
        self.conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, padding=1)

    def forward(self, x, hw, ctx):
        return image_to_tokens(self.conv(tokens_to_image(self.residual_group(x, hw, ctx), hw))) + x


class PatchEmbed(nn.Module):
    """Flattens (B, C, h, w) features to (B, h*w, C) tokens and normalises them (`patch_embed`)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(image_to_tokens(x))


@dataclasses.dataclass
class _Context:
    """Per-forward values shared by all layers."""
    rpi: torch.Tensor  # (ws*ws, ws*ws) relative-position index
    shift_mask: torch.Tensor  # (windows, ws*ws, ws*ws)
    router: object  # (B, L, classes) logits -> (B, L) int64 classes
    stable_sort: bool


class MambaIRv2Light(nn.Module):
    """MambaIRv2-Light super-resolution network (x2/x3/x4, `pixelshuffledirect` upsampler).

    Args:
        config: a `TeacherConfig` or a key of `CONFIGS`.
        routing: "gumbel" (the official behaviour: Gumbel noise at inference) or "argmax".
        stable_sort: order tokens of equal class stably (device-independent; official on CUDA).
        seed: Gumbel seed for `teacher_bridge.inference`, which seeds every image with it (tile t
            of an image gets seed + t); `forward` itself does not use it.

    Input: (B, 3, H, W) float RGB in [0, 1], H and W >= 8. Output: (B, 3, s*H, s*W), not clamped.
    """

    def __init__(self, config=DEFAULT_CONFIG, routing="gumbel", stable_sort=True,
                 seed=DEFAULT_SEED):
        super().__init__()
        if isinstance(config, str) and config not in CONFIGS:
            raise ValueError(f"unknown teacher config {config!r}; known: {sorted(CONFIGS)}")
        cfg = CONFIGS[config] if isinstance(config, str) else config
        self.config_name = config if isinstance(config, str) else "custom"
        if len(cfg.depths) != len(cfg.num_heads):
            raise ValueError(f"depths {cfg.depths} and num_heads {cfg.num_heads} differ in length")
        self.config = cfg
        self.upscale = cfg.upscale
        self.window_size = cfg.window_size
        self.routing = routing
        self.stable_sort = stable_sort
        self.seed = seed
        dim = cfg.embed_dim
        # Persistent: it is in the official checkpoints and a strict load needs it.
        self.register_buffer("relative_position_index_SA", relative_position_index(cfg.window_size))
        self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1), persistent=False)
        self.conv_first = nn.Conv2d(3, dim, 3, padding=1)
        self.patch_embed = PatchEmbed(dim)
        self.layers = nn.ModuleList(ASSB(cfg, d, h) for d, h in zip(cfg.depths, cfg.num_heads))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(dim, 3 * cfg.upscale ** 2, 3, padding=1),
                                      nn.PixelShuffle(cfg.upscale))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                _trunc_normal_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def routing(self):
        return self._routing

    @routing.setter
    def routing(self, mode):
        if mode not in ROUTING_MODES:
            raise ValueError(f"routing must be one of {ROUTING_MODES}, got {mode!r}")
        self._routing = mode

    def _router(self, batch, device, seeds):
        if self.routing == "argmax":
            return lambda logits: logits.argmax(dim=-1)
        if seeds is None:
            generators = None
        else:
            if len(seeds) != batch:
                raise ValueError(f"got {len(seeds)} seeds for a batch of {batch}")
            generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

        def gumbel(logits):
            # The draw of F.gumbel_softmax (same RNG consumption); its hard forward value is the
            # one-hot of this argmax.
            noise = torch.empty_like(logits)
            if generators is None:
                noise.exponential_()
            else:
                for item, generator in zip(noise, generators):
                    item.exponential_(generator=generator)
            return (logits - noise.log_()).softmax(dim=-1).argmax(dim=-1)

        return gumbel

    def forward(self, x, seeds=None):
        """Super-resolves a batch.

        Args:
            x: (B, 3, H, W) float RGB in [0, 1]; H, W >= 8.
            seeds: only for routing="gumbel": None to draw from torch's global RNG (official), or B
                ints, one private generator per batch item.

        Returns:
            (B, 3, s*H, s*W) float, not clamped.
        """
        h0, w0 = x.shape[-2:]
        x = mirror_pad(x, self.window_size)
        h, w = x.shape[-2:]
        x = (x - self.mean) * self.config.img_range
        ctx = _Context(rpi=self.relative_position_index_SA,
                       shift_mask=shift_attention_mask(h, w, self.window_size, x.device),
                       router=self._router(x.shape[0], x.device, seeds),
                       stable_sort=self.stable_sort)
        f0 = self.conv_first(x)
        t = self.patch_embed(f0)
        for group in self.layers:
            t = group(t, (h, w), ctx)
        t = tokens_to_image(self.norm(t), (h, w))
        y = self.upsample(self.conv_after_body(t) + f0)
        y = y / self.config.img_range + self.mean
        s = self.upscale
        return y[..., :s * h0, :s * w0]
