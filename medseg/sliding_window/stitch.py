"""Blending accumulators for sliding-window inference: dense K-channel output and streaming argmax.

Private helpers of :mod:`medseg.sliding_window.predict`.
"""

from __future__ import annotations

import torch

from medseg.sliding_window.plan import TilePlan


def label_dtype(num_classes: int) -> torch.dtype:
    """Smallest integer dtype holding ``num_classes`` labels."""
    if num_classes <= 256:
        return torch.uint8
    return torch.int16 if num_classes <= 2**15 else torch.int32


def _labels_of(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Class index per voxel of (K, *spatial) logits; K == 1 means a sigmoid output (logit > 0).

    A running maximum over channels: several times faster on CPU than ``argmax(0)`` over a leading dim,
    and it keeps argmax's tie rule (first maximum wins).
    """
    if logits.shape[0] == 1:
        return (logits[0] > 0).to(dtype)
    best = logits[0].clone()
    labels = torch.zeros(logits.shape[1:], dtype=dtype, device=logits.device)
    for k in range(1, logits.shape[0]):
        greater = logits[k] > best
        labels.masked_fill_(greater, k)
        torch.maximum(best, logits[k], out=best)
    return labels


class _Stitcher:
    """Common clipping of a tile (padded coordinates) to the image (output coordinates)."""

    def __init__(self, plan: TilePlan, weights: list[dict[int, torch.Tensor]], device: torch.device) -> None:
        self.plan = plan
        self.device = device
        self.weights = [{s: w.to(device) for s, w in wd.items()} for wd in weights]
        self.uniform = all(len(s) == 1 for s in plan.starts)  # one tile: weight is exactly 1

    def _clip(self, start: tuple[int, ...], dims: range) -> tuple[list[slice], list[slice]]:
        local, out = [], []
        for d in dims:
            lo = max(start[d], self.plan.pad[d])
            hi = min(start[d] + self.plan.tile[d], self.plan.pad[d] + self.plan.shape[d])
            local.append(slice(lo - start[d], hi - start[d]))
            out.append(slice(lo - self.plan.pad[d], hi - self.plan.pad[d]))
        return local, out

    def _weight(self, start: tuple[int, ...], local: list[slice], dims: range) -> torch.Tensor:
        n = len(self.plan.tile)
        w: torch.Tensor | None = None
        for d, sl in zip(dims, local, strict=True):
            shape = [1] * n
            wd = self.weights[d][start[d]][sl]
            shape[d] = wd.numel()
            w = wd.view(shape) if w is None else w * wd.view(shape)
        assert w is not None  # dims is never empty
        return w


class DenseAccumulator(_Stitcher):
    """Blended logits for the whole image, (B, K, *spatial) float32, on ``device``."""

    def __init__(self, plan, weights, device, batch: int, num_classes: int) -> None:
        super().__init__(plan, weights, device)
        self.out = torch.zeros((batch, num_classes, *plan.shape), dtype=torch.float32, device=device)

    def add(self, b: int, start: tuple[int, ...], pred: torch.Tensor) -> None:
        dims = range(len(start))
        local, out = self._clip(start, dims)
        # The index tuples are bound to names first: mypy's native parser takes ``x[(a, *b)]`` for the
        # 3.11-only ``x[a, *b]``; both are the same tuple index.
        src_index: tuple[slice, ...] = (slice(None), *local)
        dst_index: tuple[int | slice, ...] = (b, slice(None), *out)
        src = pred[src_index].to(self.device)
        dst = self.out[dst_index]
        if self.uniform:
            dst.copy_(src)
        else:
            dst.addcmul_(src, self._weight(start, local, dims))

    def finish_item(self, b: int) -> None:
        pass

    def probabilities(self, slab: int = 16) -> torch.Tensor:
        """Softmax (sigmoid for K == 1) over channels, in place, slab by slab to bound temporaries."""
        for b in range(self.out.shape[0]):
            for s in range(0, self.out.shape[2], slab):
                part = self.out[b, :, s : s + slab]
                if part.shape[0] == 1:
                    part.sigmoid_()
                else:
                    part.copy_(torch.softmax(part, dim=0))
        return self.out


class LabelStreamer(_Stitcher):
    """Streaming argmax: blends one row of tiles along dim 0 at a time and writes labels as rows finish.

    Memory: the labels (uint8) plus, when a row holds several tiles, one K x tile[0] x H x W float32 row
    buffer; with one tile per row only the overlap with the next row is kept between tiles.
    """

    def __init__(self, plan, weights, device, batch: int, num_classes: int) -> None:
        super().__init__(plan, weights, device)
        self.k = num_classes
        self.labels = torch.zeros((batch, 1, *plan.shape), dtype=label_dtype(num_classes), device=device)
        self.multi = any(len(s) > 1 for s in plan.starts[1:])
        self.rows = list(plan.starts[0])
        self.row: int | None = None
        self.buf: torch.Tensor | None = None
        self.carry: torch.Tensor | None = None
        self.carry_w: torch.Tensor | None = None  # dim-0 weights still to apply to a raw carry (None: applied)
        self.scratch: torch.Tensor | None = None
        self.b = 0

    def _zeros(self) -> torch.Tensor:
        return torch.zeros((self.k, self.plan.tile[0], *self.plan.shape[1:]), device=self.device)

    def add(self, b: int, start: tuple[int, ...], pred: torch.Tensor) -> None:
        self.b = b
        rest = range(1, len(start))
        local, out = self._clip(start, rest)
        src_index: tuple[slice, ...] = (slice(None), slice(None), *local)
        if not self.multi:  # the tile is the whole row: blend and finish it chunk by chunk
            self._add_single(start[0], pred[src_index])
            return
        if start[0] != self.row:
            if self.row is not None:
                self._finish_row()
            self.row, self.buf = start[0], self._zeros()
            if self.carry is not None:  # from _finish_row: already weighted
                self.buf[:, : self.carry.shape[1]] += self.carry
                self.carry = None
        w = self._weight(start, [slice(None), *local], range(len(start)))
        assert self.buf is not None  # set above when this row started
        dst_index: tuple[slice, ...] = (slice(None), slice(None), *out)
        dst = self.buf[dst_index]
        dst.addcmul_(pred[src_index].to(self.device), w)

    def _row_range(self, row: int) -> tuple[int, int, int | None]:
        """(first row to finish, end of rows to finish, start of the next tile row) in padded coordinates."""
        i = self.rows.index(row)
        nxt = self.rows[i + 1] if i + 1 < len(self.rows) else None
        end = nxt if nxt is not None else row + self.plan.tile[0]
        pad, size = self.plan.pad[0], self.plan.shape[0]
        return max(row, pad), min(end, pad + size), nxt

    def _write(self, lo: int, hi: int, logits: torch.Tensor) -> None:
        if hi > lo:
            pad = self.plan.pad[0]
            self.labels[self.b, 0, lo - pad : hi - pad] = _labels_of(logits, self.labels.dtype)

    def _add_single(self, row: int, pred: torch.Tensor, chunk: int = 8) -> None:
        w0 = self.weights[0][row]
        lo, hi, nxt = self._row_range(row)
        t0 = self.plan.tile[0]
        keep = nxt - row if nxt is not None else t0
        carry_len = self.carry.shape[1] if self.carry is not None else 0
        carries = nxt is not None and keep < t0
        # The overlap with the next tile is kept in a tensor allocated once per tile (a list of chunks joined by cat
        # would leave mid-size blocks behind on the C heap and raise the peak memory unpredictably). When no earlier
        # tile reaches into it, it holds this tile's own output in the network's dtype (half the memory in bf16,
        # nothing lost) and the weights are applied when the next tile adds in; else the weighted float32 sum.
        raw = carries and carry_len <= keep
        new_carry = new_w = None
        shape = (pred.shape[0], t0 - keep, *pred.shape[2:])
        if raw:
            new_carry = torch.empty(shape, dtype=pred.dtype, device=self.device)
            new_carry.copy_(pred[:, keep:])
            new_w = w0[keep:]
        elif carries:
            new_carry = torch.empty(shape, dtype=torch.float32, device=self.device)
        per_row = (-1, *([1] * (pred.ndim - 2)))  # a dim-0 weight vector broadcast over (K, rows, *rest)
        for a in range(0, t0, chunk):
            if raw and a >= keep:  # the rest is carried as it is
                break
            b = min(a + chunk, t0)
            if a >= carry_len and b <= keep and bool((w0[a:b] == 1).all()):  # covered by this tile only
                wlo, whi = max(lo, row + a), min(hi, row + b)
                if whi > wlo:  # no blending: labels straight from the (possibly bf16) network output
                    self._write(wlo, whi, pred[:, wlo - row : whi - row].to(self.device))
                continue
            v = self._scratch(pred, chunk)[:, : b - a]
            v.copy_(pred[:, a:b])
            v *= w0[a:b].view(per_row)
            if a < carry_len:
                assert self.carry is not None  # carry_len > 0
                n = min(b, carry_len) - a
                if self.carry_w is None:
                    v[:, :n] += self.carry[:, a : a + n]
                else:
                    v[:, :n].addcmul_(self.carry[:, a : a + n], self.carry_w[a : a + n].view(per_row))
            if a < keep:  # rows that no later tile touches
                wlo, whi = max(lo, row + a), min(hi, row + min(b, keep))
                if whi > wlo:
                    self._write(wlo, whi, v[:, wlo - row - a : whi - row - a])
            if b > keep and new_carry is not None and not raw:
                new_carry[:, max(a, keep) - keep : b - keep] = v[:, max(keep - a, 0) :]
        self.carry, self.carry_w = new_carry, new_w

    def _scratch(self, pred: torch.Tensor, chunk: int) -> torch.Tensor:
        """One float32 chunk buffer for the whole job (fewer mid-size allocations, steadier peak memory)."""
        shape = (pred.shape[0], chunk, *pred.shape[2:])
        if self.scratch is None or tuple(self.scratch.shape) != shape:
            self.scratch = torch.empty(shape, dtype=torch.float32, device=self.device)
        return self.scratch

    def _finish_row(self, chunk: int = 8) -> None:
        row, buf = self.row, self.buf
        assert row is not None and buf is not None  # only called while a row is open
        lo, hi, nxt = self._row_range(row)
        for a in range(lo, hi, chunk):
            b = min(a + chunk, hi)
            self._write(a, b, buf[:, a - row : b - row])
        self.carry = buf[:, nxt - row :].clone() if nxt is not None else None
        self.buf, self.row = None, None

    def finish_item(self, b: int) -> None:
        if self.buf is not None:
            self._finish_row()
        self.carry = self.carry_w = None
