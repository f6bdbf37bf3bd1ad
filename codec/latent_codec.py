"""The learned latent codec: ELIC-style transforms, hyperprior and channel-conditional entropy model.

It compresses the autoencoder's 32-channel latent. One model serves every rate: a gain
vector per trained rate point scales ``y`` before quantisation (Cui et al., "Asymmetric gained
deep image compression with continuous rate adaptation", CVPR 2021), and rates between two
points interpolate the gains geometrically. ``y`` is coded in channel slices; each slice's
mean and scale come from the hyperprior and the slices already decoded (Minnen & Singh 2020,
He et al. ELIC 2022, without the spatial checkerboard).

``forward`` is the training path (float). ``compress``/``decompress`` derive every entropy
parameter with :mod:`codec.fixed_point`, from integer tables frozen by :meth:`freeze`, so
decoded symbols are bit-exact on any hardware, thread count and batch composition.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder, RansDecoder
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.ops import LowerBound
from torch import nn

from codec.fixed_point import ACT_BITS, ACT_LIMIT, FixedSequential, from_fixed, shift_floor, to_fixed
from codec.layers import ResBlock, ResidualStack, conv3, conv5
from codec.rans_guard import room_after

GAIN_BITS = 12  # fractional bits of the frozen gain tables
# Gaussian scale table: 2**(SCALE_LOG2_MIN + i * SCALE_LOG2_STEP), i < NUM_SCALES.
SCALE_LOG2_MIN = -3.25
SCALE_LOG2_STEP = 0.25
NUM_SCALES = 48
LEVELS_PER_POINT = 8  # rate levels between two trained rate points


class FrozenCoding(nn.Module):
    """What coding reads at run time, frozen: the integer twins of the entropy-parameter
    networks, the per-level gain tables (buffers: they move with ``.to(device)``; float64
    holding integers, exact on any device) and the CDF tables as the Python lists rANS takes."""

    def __init__(self, h_s: nn.Sequential, param_nets: nn.ModuleList, tables: dict[str, torch.Tensor],
                 gaussian: GaussianConditional) -> None:  # fmt: skip
        super().__init__()
        self.h_s = FixedSequential(h_s)
        self.params = nn.ModuleList(FixedSequential(net) for net in param_nets)
        for name in ("gain", "inv_gain", "log2_gain"):
            self.register_buffer(name, tables[f"frozen.{name}"].double().cpu(), persistent=False)
        self.y_cdf = gaussian._quantized_cdf.tolist()
        self.y_len = gaussian._cdf_length.reshape(-1).tolist()
        self.y_off = gaussian._offset.reshape(-1).tolist()


@dataclass
class LatentCodecConfig:
    latent_channels: int = 32
    patch: int = 4  # y has one vector per patch x patch block of the latent
    # "patch": one strided patch×patch conv each way (KLT-initialised; the v1 model). "conv":
    # overlapping 5×5 strided convolutions and residual blocks, log2(patch) stages each way, so
    # the reconstruction has no block structure (the v2 model, trained with a perceptual loss).
    transform: str = "patch"
    hidden: int = 128
    y_channels: int = 256
    z_channels: int = 64
    slices: list[int] = field(default_factory=lambda: [16, 16, 32, 64, 128])
    param_hidden: int = 128
    refine_hidden: int = 64  # the latent-resolution refinement after the synthesis transform
    num_rate_points: int = 10
    lambdas: list[float] = field(default_factory=lambda: [3e-7 * 2.4**k for k in range(10)])

    def to_dict(self) -> dict:
        return asdict(self)


def scale_table() -> torch.Tensor:
    return 2.0 ** (SCALE_LOG2_MIN + SCALE_LOG2_STEP * torch.arange(NUM_SCALES, dtype=torch.float64))


def latent_patches(latent: torch.Tensor, patch: int) -> torch.Tensor:
    """(C, H, W) latent -> (patches, C·patch²) in float64: its non-overlapping patch×patch blocks."""
    return F.unfold(latent[None].double(), patch, stride=patch)[0].T


def patch_klt(latents: list[torch.Tensor], patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The KLT (PCA) of the latents' patches: every principal component as a row, strongest
    first (orthonormal, float64), and the patches' mean."""
    patches = torch.cat([latent_patches(lat, patch) for lat in latents])
    eigvals, eigvecs = torch.linalg.eigh(torch.cov(patches.T))
    return eigvecs[:, eigvals.argsort(descending=True)].T, patches.mean(0)



def patch_transforms(c: LatentCodecConfig) -> tuple[nn.Module, nn.Module]:
    """The v1 transforms: a patch transform (a strided conv, initialised by
    ``LatentCodec.init_transforms`` to the KLT of latent patches, so that g_s(g_a(x)) starts as
    the best rank-M projection) followed by residual stacks that start as the identity. Training
    then only has to learn the nonlinear part: on a CPU budget this converges far faster than
    learning the transform pair from scratch. Its price is a rank cap and block seams."""
    n, m, k = c.hidden, c.y_channels, c.patch
    if m > c.latent_channels * k * k:
        raise ValueError("y_channels must not exceed latent_channels x patch^2")
    g_a = nn.Sequential(nn.Conv2d(c.latent_channels, m, k, stride=k), ResidualStack(m, n, blocks=2))
    g_s = nn.Sequential(
        ResidualStack(m, n, blocks=3),
        nn.ConvTranspose2d(m, c.latent_channels, k, stride=k),
        ResidualStack(c.latent_channels, c.refine_hidden, blocks=2),  # smooths patch seams
    )  # fmt: skip
    return g_a, g_s


def conv_transforms(c: LatentCodecConfig) -> tuple[nn.Module, nn.Module]:
    """The v2 transforms: every output depends on overlapping neighbourhoods (5×5 strided convs
    down, conv + pixel shuffle up, residual blocks between), so nothing aligns to a grid."""
    n, m = c.hidden, c.y_channels
    stages = int(math.log2(c.patch))
    if 2**stages != c.patch or stages < 1:
        raise ValueError("the conv transform needs patch = 2, 4 or 8")
    down: list[nn.Module] = [conv3(c.latent_channels, n), ResBlock(n)]
    for i in range(stages):
        down += [conv5(n, m if i == stages - 1 else n, stride=2)]
        if i < stages - 1:
            down += [ResBlock(n), ResBlock(n)]
    up: list[nn.Module] = [conv3(m, n), ResBlock(n), ResBlock(n)]
    for _ in range(stages):
        up += [conv3(n, 4 * n), nn.PixelShuffle(2), ResBlock(n)]
    up += [conv3(n, c.latent_channels)]
    return nn.Sequential(*down), nn.Sequential(*up)


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


class LatentCodec(nn.Module):
    def __init__(self, config: LatentCodecConfig | None = None) -> None:
        super().__init__()
        c = self.config = config or LatentCodecConfig()
        if sum(c.slices) != c.y_channels:
            raise ValueError("slices must add up to y_channels")
        n, m = c.hidden, c.y_channels
        if c.transform == "patch":
            self.g_a, self.g_s = patch_transforms(c)
        elif c.transform == "conv":
            self.g_a, self.g_s = conv_transforms(c)
        else:
            raise ValueError(f"unknown transform {c.transform!r} (expected 'patch' or 'conv')")
        self.h_a = nn.Sequential(conv3(m, n), nn.ReLU(), conv5(n, n, stride=2), nn.ReLU(), conv5(n, c.z_channels, 2))
        # Entropy-parameter networks: Conv2d, ReLU and PixelShuffle only (see codec.fixed_point).
        self.h_s = nn.Sequential(
            conv3(c.z_channels, n), nn.ReLU(), conv3(n, 2 * n), nn.PixelShuffle(2), nn.ReLU(),
            conv3(n // 2, 2 * n), nn.PixelShuffle(2), nn.ReLU(), conv3(n // 2, m), nn.ReLU(),
        )  # fmt: skip
        self.param_nets = nn.ModuleList()
        done = 0
        for s in c.slices:
            self.param_nets.append(
                nn.Sequential(
                    conv3(m + done, c.param_hidden), nn.ReLU(),
                    conv3(c.param_hidden, c.param_hidden // 2), nn.ReLU(),
                    conv3(c.param_hidden // 2, 2 * s),
                )  # fmt: skip
            )
            done += s
        # Initial gains follow the high-rate optimum (quantisation step ~ 1/sqrt(lambda)), with a step
        # of 0.5 latent units at the highest rate; training refines them per channel.
        log_l = torch.tensor(c.lambdas, dtype=torch.float32).log()
        init = math.log(2.0) + 0.5 * (log_l - log_l[-1])
        self.log_gain = nn.Parameter(init[:, None].repeat(1, m))
        self.entropy_bottleneck = EntropyBottleneck(c.z_channels)
        self.gaussian = GaussianConditional(None)
        self.scale_bound = LowerBound(2.0**SCALE_LOG2_MIN)
        self.coding: FrozenCoding | None = None  # set by load_frozen

    @property
    def stride(self) -> int:
        """Total downsampling from the latent to z: latent sides must be multiples of it."""
        return self.config.patch * 4

    def symbol_counts(self, z_shape: tuple[int, int]) -> tuple[int, int]:
        """How many symbols one stream's z and y hold, for a hyper-latent of ``z_shape``."""
        rows, cols = z_shape
        up = self.stride // self.config.patch  # y's resolution over z's, each way
        return self.config.z_channels * rows * cols, self.config.y_channels * rows * cols * up * up

    @torch.no_grad()
    def init_transforms(self, latents: list[torch.Tensor]) -> None:
        """Set the patch transforms to the KLT (PCA) of the latents' patches, strongest first.

        The strongest components land in the first slices, which the later slices are
        conditioned on, as in ELIC's uneven grouping.
        """
        c = self.config
        if c.transform != "patch":
            raise ValueError("init_transforms sets the patch transform; this codec has none")
        k, m = c.patch, c.y_channels
        components, mean = patch_klt(latents, k)
        basis = components[:m]  # (m, C*k*k), orthonormal rows
        analysis, synthesis = self.g_a[0], self.g_s[1]
        analysis.weight.copy_(basis.reshape(m, c.latent_channels, k, k))
        analysis.bias.copy_(-(basis @ mean))
        synthesis.weight.copy_(basis.reshape(m, c.latent_channels, k, k))
        synthesis.bias.copy_(mean.reshape(c.latent_channels, k * k).mean(1))

    # ----- rate --------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return (self.config.num_rate_points - 1) * LEVELS_PER_POINT + 1

    def _interpolate(self, log_table: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """Linear interpolation of per-rate-point log values at continuous rates in [0, K-1]."""
        lo = rate.floor().long().clamp(0, self.config.num_rate_points - 2)
        t = (rate - lo).reshape(-1, *[1] * (log_table.dim() - 1))
        return log_table[lo] * (1 - t) + log_table[lo + 1] * t

    def gains(self, rate: torch.Tensor) -> torch.Tensor:
        """Gains for continuous rates (one per batch item), geometric between points: (B, M, 1, 1)."""
        return self._interpolate(self.log_gain, rate).exp()[:, :, None, None]

    def lambdas(self, rate: torch.Tensor) -> torch.Tensor:
        return self._interpolate(torch.tensor(self.config.lambdas).log().to(rate.device), rate).exp()

    # ----- training ----------------------------------------------------------------------
    def forward(self, latent: torch.Tensor, rate: torch.Tensor) -> dict:
        """Training pass. Returns the reconstructed latent and the likelihoods of y and z."""
        return self.forward_y(self.g_a(latent), rate)

    def forward_y(self, y: torch.Tensor, rate: torch.Tensor, rounded_z: bool = False) -> dict:
        """The training pass from ``y`` on. ``rounded_z``: the likelihoods of z are those of its
        rounded values (what coding spends), not of z plus noise; the encoder's refinement
        (:mod:`codec.latent_refine`) optimises y against them."""
        z = self.h_a(y)
        z_offset = self.entropy_bottleneck._get_medians()
        z_hat = ste_round(z - z_offset) + z_offset
        if rounded_z:
            c = z_hat.shape[1]  # the bottleneck's density takes (C, 1, N)
            z_likelihoods = self.entropy_bottleneck._likelihood(z_hat.transpose(0, 1).reshape(c, 1, -1))[0]
            z_likelihoods = self.entropy_bottleneck.likelihood_lower_bound(z_likelihoods)
        else:
            _, z_likelihoods = self.entropy_bottleneck(z)
        hyper = self.h_s(z_hat)
        g = self.gains(rate)
        y_hat_slices, y_likelihoods = [], []
        start = 0
        for size, net in zip(self.config.slices, self.param_nets):
            mu, log2_sigma = net(torch.cat([hyper, *y_hat_slices], dim=1)).chunk(2, dim=1)
            gs = g[:, start : start + size]
            y_r = y[:, start : start + size] * gs
            mu_r = mu * gs
            sigma_r = self.scale_bound(torch.exp2(log2_sigma) * gs)
            y_hat_r = ste_round(y_r - mu_r) + mu_r  # rounded likelihoods: no noise-vs-round rate gap
            y_likelihoods.append(self.gaussian._likelihood(y_hat_r, sigma_r, mu_r))
            y_hat_slices.append(y_hat_r / gs)
            start += size
        y_hat = torch.cat(y_hat_slices, dim=1)
        lik_y = self.gaussian.likelihood_lower_bound(torch.cat(y_likelihoods, dim=1))
        return {"latent_hat": self.g_s(y_hat), "likelihoods": {"y": lik_y, "z": z_likelihoods}}

    # ----- freezing for coding ---------------------------------------------------------
    @torch.no_grad()
    def freeze(self) -> dict[str, torch.Tensor]:
        """Integer tables that coding depends on: CDFs, gain tables. Stored with the weights."""
        self.entropy_bottleneck.update(force=True)
        self.gaussian.update_scale_table(scale_table().float(), force=True)
        q = torch.arange(self.num_levels, dtype=torch.float64) / LEVELS_PER_POINT
        g = self.gains(q.float()).double()[:, :, 0, 0]
        return {
            "frozen.z_cdf": self.entropy_bottleneck._quantized_cdf.clone(),
            "frozen.z_cdf_length": self.entropy_bottleneck._cdf_length.clone(),
            "frozen.z_offset": self.entropy_bottleneck._offset.clone(),
            "frozen.y_cdf": self.gaussian._quantized_cdf.clone(),
            "frozen.y_cdf_length": self.gaussian._cdf_length.clone(),
            "frozen.y_offset": self.gaussian._offset.clone(),
            "frozen.gain": torch.round(g * 2**GAIN_BITS).long(),
            "frozen.inv_gain": torch.round(2**GAIN_BITS / g).long(),
            "frozen.log2_gain": torch.round(torch.log2(g) * 2**ACT_BITS).long(),
        }

    def load_frozen(self, tables: dict[str, torch.Tensor]) -> None:
        """Install frozen tables (never recomputed from floats at decode time)."""
        eb, gc = self.entropy_bottleneck, self.gaussian
        device = self.log_gain.device
        # CompressAI registers these as buffers: assigning keeps them buffers (they move with .to())
        eb._quantized_cdf = tables["frozen.z_cdf"].int().to(device)
        eb._cdf_length = tables["frozen.z_cdf_length"].int().to(device)
        eb._offset = tables["frozen.z_offset"].int().to(device)
        gc._quantized_cdf = tables["frozen.y_cdf"].int().to(device)
        gc._cdf_length = tables["frozen.y_cdf_length"].int().to(device)
        gc._offset = tables["frozen.y_offset"].int().to(device)
        gc.scale_table = scale_table().float().to(device)
        self.coding = FrozenCoding(self.h_s, self.param_nets, tables, gc).to(device)

    def _require_frozen(self) -> "FrozenCoding":
        if self.coding is None:
            raise RuntimeError("latent codec has no frozen tables: load it from a preset or call load_frozen(freeze())")
        return self.coding

    # ----- coding ------------------------------------------------------------------------
    def _fixed_params(self, level: int, k: int, hyper_fx: torch.Tensor, done_fx: list[torch.Tensor]):
        """Exact mean (fixed point, scaled domain) and scale index of slice ``k`` at ``level``."""
        fx = self._require_frozen()
        start = sum(self.config.slices[:k])
        size = self.config.slices[k]
        # the decoded slices enter as activations, clamped like every other one (spec section 4.1):
        # a real ŷ stays far inside (|ŷ| < 2**17 measured), a crafted one cannot push a sum past 2**53
        done = [d.clamp(-ACT_LIMIT, ACT_LIMIT) for d in done_fx]
        out = fx.params[k](torch.cat([hyper_fx, *done], dim=1))
        mu_fx, log2_sigma_fx = out[:, :size], out[:, size:]
        gain = fx.gain[level, start : start + size][None, :, None, None]
        log2_gain = fx.log2_gain[level, start : start + size][None, :, None, None]
        mu_r_fx = shift_floor(mu_fx * gain, GAIN_BITS)
        step = 2 ** ACT_BITS * SCALE_LOG2_STEP
        idx = torch.floor((log2_sigma_fx + log2_gain - SCALE_LOG2_MIN * 2**ACT_BITS + step / 2) / step)
        return mu_r_fx, idx.clamp_(0, NUM_SCALES - 1).long()

    def _unscale(self, level: int, k: int, y_hat_r_fx: torch.Tensor) -> torch.Tensor:
        fx = self._require_frozen()
        start = sum(self.config.slices[:k])
        inv = fx.inv_gain[level, start : start + self.config.slices[k]]
        return shift_floor(y_hat_r_fx * inv[None, :, None, None], GAIN_BITS).clamp_(-(2.0**30), 2.0**30)

    @torch.no_grad()
    def analyse(self, latent: torch.Tensor) -> dict:
        """The rate-independent half of encoding: y, the z strings and the exact hyper features."""
        return self.analyse_y(self.g_a(latent))

    @torch.no_grad()
    def analyse_y(self, y: torch.Tensor) -> dict:
        """:meth:`analyse` from a given ``y`` (the analysis transform's, or a refined one)."""
        fx = self._require_frozen()
        z = self.h_a(y)
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        return {"y": y, "z_strings": z_strings, "z_shape": tuple(z.shape[-2:]), "hyper_fx": fx.h_s(to_fixed(z_hat))}

    @torch.no_grad()
    def quantise(self, analysed: dict, level: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """y at one rate level as a decoder will recover it, without entropy coding: each slice's
        integer symbols and scale-table indexes, in coding order, and the exact fixed-point
        ``y_hat`` (trainers that need ẑ but no stream call this alone)."""
        fx = self._require_frozen()
        y, hyper_fx = analysed["y"], analysed["hyper_fx"]
        gain = fx.gain[level].float()[None, :, None, None] / 2**GAIN_BITS
        y_r = y * gain
        slices, done_fx = [], []
        start = 0
        for k, size in enumerate(self.config.slices):
            mu_r_fx, idx = self._fixed_params(level, k, hyper_fx, done_fx)
            symbols = torch.round(y_r[:, start : start + size].double() - from_fixed(mu_r_fx).double())
            slices.append((symbols, idx))
            done_fx.append(self._unscale(level, k, symbols * 2**ACT_BITS + mu_r_fx))
            start += size
        return slices, torch.cat(done_fx, dim=1)

    @torch.no_grad()
    def code_latent(self, analysed: dict, level: int) -> tuple[list[bytes], torch.Tensor]:
        """Entropy-code y at one rate level: one string per batch item, and the exact fixed-point
        ``y_hat`` a decoder must recover from them (what verify-after-encode compares)."""
        fx = self._require_frozen()
        slices, y_hat = self.quantise(analysed, level)
        encoders = [BufferedRansEncoder() for _ in range(y_hat.shape[0])]
        for symbols, idx in slices:
            for b, enc in enumerate(encoders):
                enc.encode_with_indexes(
                    symbols[b].int().reshape(-1).tolist(), idx[b].reshape(-1).tolist(),
                    fx.y_cdf, fx.y_len, fx.y_off,
                )  # fmt: skip
        return [enc.flush() for enc in encoders], y_hat

    @torch.no_grad()
    def compress(self, latent: torch.Tensor, level: int) -> dict:
        """Latents (B, C, h, w), h and w multiples of ``stride`` -> y and z strings per item, and the z shape."""
        analysed = self.analyse(latent)
        return {"y": self.code_latent(analysed, level)[0], "z": analysed["z_strings"], "z_shape": analysed["z_shape"]}

    @torch.no_grad()
    def decompress_symbols(
        self, y_strings: list[bytes], z_strings: list[bytes], z_shape: tuple[int, int], level: int
    ) -> torch.Tensor:
        """Entropy-decode to the exact fixed-point ``y_hat`` (unscaled, ACT_BITS fraction bits).

        The result is bit-identical whatever the batch it is decoded in, the thread count or
        the device: this is what the determinism tests check.
        """
        fx = self._require_frozen()
        n_z, n_y = self.symbol_counts(z_shape)
        z_hat = self.entropy_bottleneck.decompress([room_after(s, n_z) for s in z_strings], z_shape)
        hyper_fx = fx.h_s(to_fixed(z_hat))
        decoders = []
        for s in y_strings:
            decoders.append(RansDecoder())
            decoders[-1].set_stream(room_after(s, n_y))
        done_fx: list[torch.Tensor] = []
        for k, _ in enumerate(self.config.slices):
            mu_r_fx, idx = self._fixed_params(level, k, hyper_fx, done_fx)
            values = [
                dec.decode_stream(idx[b].reshape(-1).tolist(), fx.y_cdf, fx.y_len, fx.y_off)
                for b, dec in enumerate(decoders)
            ]
            symbols = torch.tensor(values, dtype=torch.float64, device=mu_r_fx.device).reshape(idx.shape)
            done_fx.append(self._unscale(level, k, symbols * 2**ACT_BITS + mu_r_fx))
        return torch.cat(done_fx, dim=1)

    @torch.no_grad()
    def decompress(self, y_strings: list[bytes], z_strings: list[bytes], z_shape: tuple[int, int], level: int) -> torch.Tensor:
        y_hat_fx = self.decompress_symbols(y_strings, z_strings, z_shape, level)
        return self.g_s(from_fixed(y_hat_fx))
