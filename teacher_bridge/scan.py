"""Selective scan of MambaIRv2 (Mamba's S6 recurrence, one shared B/C group) in plain PyTorch.

The official model calls mamba_ssm's CUDA kernel, which neither installs nor runs on CPU. The
recurrence, for every channel d and state n, over positions l of one sequence:

    dt_l[d]   = softplus(delta_l[d] + delta_bias[d])
    h_l[d, n] = exp(dt_l[d] A[d, n]) h_{l-1}[d, n] + dt_l[d] B_l[n] u_l[d]        (h_{-1} = 0)
    y_l[d]    = sum_n h_l[d, n] C_l[n] + D[d] u_l[d]

`selective_scan` evaluates it in two levels so that Python loops run about 2 sqrt(L) times rather
than L times: the sequence is cut into chunks of T positions; a loop over the T offsets scans every
chunk at once from a zero state; a loop over the chunks carries each chunk's final state into the
next; a vectorised correction adds the carried state, decayed by the running product of exp(dt A)
inside the chunk. Every decay factor is at most 1, so nothing can overflow. Long sequences are
processed in segments of a few thousand positions, each starting from the previous one's final
state, so that the (positions, n, d) intermediates stay in the CPU cache.
`selective_scan_reference` is the plain loop over positions, kept as the specification the chunked
version is tested against.
"""
import math

import torch
import torch.nn.functional as F


def selective_scan_reference(u, delta, A, B, C, D, delta_bias):
    """Scans position by position: slow (L Python steps), a literal transcription of the recurrence.

    Args and Returns: as `selective_scan`.
    """
    dt = F.softplus(delta.float() + delta_bias.float())  # PyTorch's threshold (20) is the kernel's
    decay = torch.exp(dt.unsqueeze(-1) * A.float())
    drive = (dt * u.float()).unsqueeze(-1) * B.float().unsqueeze(-2)
    h = torch.zeros_like(drive[:, 0])
    ys = []
    for pos in range(u.shape[1]):
        h = decay[:, pos] * h + drive[:, pos]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, pos].float()))
    return torch.stack(ys, dim=1) + u.float() * D.float()


def _scan_segment(u, dt, A, B, C, h0, steps):
    """Chunked scan of one segment from state h0 (b, n, d); returns (y without D u, final state).

    The segment length must be a multiple of `steps` unless it is the last segment, whose final
    state (after the padding) is not meaningful.
    """
    batch, length, d = u.shape
    chunks = -(-length // steps)
    pad = chunks * steps - length
    if pad:
        # The scan is causal: zero inputs appended at the end cannot change earlier outputs.
        u, dt, B, C = (F.pad(t, (0, 0, 0, pad)) for t in (u, dt, B, C))

    def offset_major(t):
        # (b, L, k) -> (T, b, chunks, k), contiguous, so that the loops below read contiguous
        # slices and the (.., n, d) products built from these inputs come out in the same layout.
        return t.reshape(batch, chunks, steps, -1).permute(2, 0, 1, 3).contiguous()

    # States are laid out (n, d), d innermost: broadcasting over a long inner axis is much faster
    # on CPU than over n = 8.
    decay = torch.exp(offset_major(dt).unsqueeze(-2) * A.t())  # (T, b, chunks, n, d)
    state = offset_major(B).unsqueeze(-1) * offset_major(dt * u).unsqueeze(-2)
    for t in range(1, steps):
        # Local scans of all chunks from a zero state, and the decay from each chunk start to t.
        state[t].addcmul_(decay[t], state[t - 1])
        decay[t].mul_(decay[t - 1])
    chunk_decay = decay[-1].transpose(0, 1)  # (chunks, b, n, d)
    chunk_end = state[-1].transpose(0, 1)
    carry = torch.empty_like(chunk_end)  # state entering each chunk
    carry[0] = h0
    for c in range(1, chunks):
        torch.addcmul(chunk_end[c - 1], chunk_decay[c - 1], carry[c - 1], out=carry[c])
    h_last = chunk_end[-1] + chunk_decay[-1] * carry[-1]
    state.addcmul_(decay, carry.transpose(0, 1).unsqueeze(0))
    del decay
    y = torch.matmul(offset_major(C).unsqueeze(-2), state).squeeze(-2)  # (T, b, chunks, d)
    return y.permute(1, 2, 0, 3).reshape(batch, chunks * steps, d)[:, :length], h_last


def selective_scan(u, delta, A, B, C, D, delta_bias, chunk=None, segment=4096):
    """Runs the selective scan over a batch of sequences (chunked, float32, CPU or CUDA).

    Args:
        u: (batch, L, d) input sequence.
        delta: (batch, L, d) time step before bias and softplus.
        A: (d, n) state matrix (negative for a stable scan).
        B: (batch, L, n) input projection, shared by all d channels.
        C: (batch, L, n) output projection, shared by all d channels.
        D: (d,) skip weight.
        delta_bias: (d,) added to delta before the softplus.
        chunk: positions per chunk; default about sqrt(min(L, segment)), which balances the two
            Python loops of a segment.
        segment: about this many positions are scanned at a time (rounded to whole chunks), so
            that the (positions, n, d) intermediates of a segment stay in the CPU cache.

    Returns:
        (batch, L, d) float32 output y.
    """
    batch, length, d = u.shape
    u, B, C, A = u.float(), B.float(), C.float(), A.float()
    dt = F.softplus(delta.float() + delta_bias.float())  # PyTorch's threshold (20) is the kernel's
    span = min(length, segment)
    steps = chunk or max(1, math.isqrt(span - 1) + 1)
    span = max(steps, span // steps * steps)
    y = torch.empty_like(u)
    h = u.new_zeros(batch, A.shape[1], d)
    for start in range(0, length, span):
        part = slice(start, start + span)
        y[:, part], h = _scan_segment(u[:, part], dt[:, part], A, B[:, part], C[:, part], h, steps)
    return y + u * D.float()
