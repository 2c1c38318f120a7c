"""What each node kind computes, on whole stacks at a time.

One runner per kind, looked up by ``node.kind`` in :data:`RUNNERS`. Each runner
has, side by side:

``forward``
    values of all members (batched products over ``m*B`` rows; a chain's
    recurrent input as one scan kernel);
``propose``
    the displacement each credit edge proposes to its source (``P``), by the
    edge's credit rule (:mod:`tpgraph.rules`: the rule object says what it
    needs and calls the kernels; e.g. ``gradient``: the local vector-Jacobian
    product ``J^T D``; ``dtp``/``tp``: the learned inverse); for losses
    ``-alpha dL/dh``;
``grads``
    the gradient of the local loss ``1/2 ||f(inputs at forward values) - h_hat||^2``
    with respect to the node's own parameter groups, summed over the batch
    and accumulated over all nodes sharing a group;
``inverse_grads``
    the objective of each inverse (:mod:`tpgraph.inverse_losses`:
    reconstruction by default) and its gradient with respect to the
    inverse's own groups (``V``, ``c``), with optional denoising noise.

Every array operation is a NumPy BLAS call or a kernel of
:mod:`tpgraph.kernels`, writing into :mod:`tpgraph.buffers`.
"""

from __future__ import annotations

import abc

import numpy as np

from .errors import GraphError
from .inverse_losses import value_features
from .kernels import dense as kd
from .kernels import elementwise as ke
from .kernels import losses as kl
from .kernels.activations import bias_activate, add_bias_activate, mul_deriv
from .plan import act_code


class DataRunner:
    """Data inputs: fed by the engine, no credit."""

    def forward(self, eng, st, b):
        pass

    def propose(self, eng, st, b):
        pass

    def grads(self, eng, st, b):
        pass

    def inverse_grads(self, eng, st, b):
        pass


def _slot_input(eng, st, b, slot, sb):
    """Fill a gathered input (sources not contiguous in their stack)."""
    if sb.gathered:
        kd.gather_rows(sb.x, eng.buf.stacks[slot.src].h, slot.rows)


def _accumulate(eng, st, b, exclude, out2, weights_t):
    """``out2 = sum_{slot != exclude} x_slot @ W_slot^T`` (forward weights, no bias).

    Returns False if no slot contributed (``out2`` then holds zeros).
    """
    first = True
    for slot, sb in zip(st.slots, b.slots):
        if slot.index == exclude:
            continue
        wt = weights_t[slot.weight]
        if slot.src_is_index:
            kd.gather_rows_add(out2, wt, sb.x1, not first)
        else:
            if first:
                np.dot(sb.x2, wt, out=out2)
            else:
                np.dot(sb.x2, wt, out=b.z2)
                out2 += b.z2
        first = False
    if first:
        out2.fill(0)
    return not first


def _cut_ranges(ranges, cuts, fused):
    """The scan ranges ``(start, end)`` of a chain split at its cut members.

    Member ``c`` in ``cuts`` proposes nothing to ``c - 1``: a range that
    covers ``c`` ends at ``c + 1`` (whose proposal still merges into ``c``),
    and the next starts at ``c - 1``, finalised afresh. A range with
    ``start < end`` only finalises its member's merge.
    """
    cut = set(cuts)
    out = []
    for start, end in ranges:
        if not fused:  # one member at a time (python merges): a cut member is only finalised
            out.append((start, start + 1) if start in cut else (start, end))
            continue
        seg = start
        for k in range(start, end - 1, -1):
            if k in cut:
                out.append((seg, k + 1))
                seg = k - 1
        if seg >= end:
            out.append((seg, end))
        elif seg == end - 1 and seg >= 0:  # the cut was at ``end``: member end - 1 still needs its merge
            out.append((seg, seg + 1))
    return out


def other_inputs(eng, st, b, slot, sb):
    """``sb.og``: what an inverse of ``slot`` takes from the node's other inputs (through the forward weights).

    With ``others="forward"`` the sum of the other slots' ``x @ W^T`` (a
    chain's recurrent slot reuses the forward pass's ``b.a``); zeros with
    ``others="none"``. Every inverse kind starts from it.
    """
    if slot.inverse.others == "forward":
        if st.chain and slot.recurrent:
            np.copyto(sb.og, b.a)  # the non-recurrent inputs, already summed in forward
        else:
            _accumulate(eng, st, b, slot.index, sb.og2, eng.wt)
    else:
        sb.og.fill(0)


class DenseRunner:
    """``h = act(sum_i W_i h_i + b)``; softmax outputs are dense with identity activation."""

    def forward(self, eng, st, b):
        node = st.node
        code = eng.codes[st.id]
        bias = eng.params[node.bias] if node.bias else b.zero_bias
        for slot, sb in zip(st.slots, b.slots):
            if not slot.recurrent:
                _slot_input(eng, st, b, slot, sb)
        if st.chain:
            _accumulate(eng, st, b, st.rec_slot, b.a2, eng.wt)
            init_stack, init_member = st.init_src
            b.hext[0] = eng.buf.stacks[init_stack].h[init_member]
            wt = eng.wt[node.weights[st.rec_slot]]
            if eng.gemm is not None:
                kd.scan_forward_cblas(eng.gemm, eng.one, eng.zero, b.hext, b.a, bias, wt, code, node.slope, b.tmp)
            else:
                kd.scan_forward(b.hext, b.a, bias, wt, code, node.slope, b.tmp)
        else:
            _accumulate(eng, st, b, -1, b.h2, eng.wt)
            bias_activate(b.h2, bias, code, node.slope, b.h2)
        for slot, sb in zip(st.slots, b.slots):
            sb.ready = False

    # ------------------------------------------------------------------ inverse
    def inverse_at_forward(self, eng, st, b, slot, sb):
        """``og`` (the inverse's input from the other slots, plus ``c``) and ``gf = g(h_v)``."""
        if sb.ready:
            return
        inv = slot.inverse
        other_inputs(eng, st, b, slot, sb)
        if inv.bias:
            sb.og2 += eng.params[inv.bias]
        np.dot(value_features(eng, st, b, inv, sb), eng.wt[inv.weight], out=sb.gf2)
        ctx = slot.context
        if ctx is not None:  # a joint inverse: gf = g(h_v, h_s) with the siblings' values (og keeps without)
            kd.gather_or_zero(sb.cy, eng.buf.stacks[ctx.src].h, ctx.rows)
            np.dot(sb.cy2, eng.wt[ctx.group], out=sb.ogt2)
            sb.gf2 += sb.ogt2
        add_bias_activate(sb.gf2, sb.og2, eng.zero_src[slot.src_size], eng.inv_codes[(st.id, slot.index)],
                          inv.slope, sb.gf2)
        sb.ready = True

    # ------------------------------------------------------------------ credit
    def propose(self, eng, st, b):
        node = st.node
        code = eng.codes[st.id]
        if st.chain:
            self._propose_chain(eng, st, b, code)
        else:
            eng.finalize_merge(st, b, range(st.m))
            mul_deriv(b.d2, b.h2, code, node.slope, b.delta2)
        for slot, sb in zip(st.slots, b.slots):
            if not slot.propose or slot.recurrent:
                continue
            slot.credit.propose(self, eng, st, b, slot, sb)
            eng.deliver(st, slot, sb)

    def _propose_chain(self, eng, st, b, code):
        node = st.node
        slot = st.slots[st.rec_slot]
        sb = b.slots[st.rec_slot]
        m = st.m
        stop = 0 if st.propose_init else 1
        credit = slot.credit
        if not credit.carries_credit:
            eng.finalize_merge(st, b, range(m))
            mul_deriv(b.d2, b.h2, code, node.slope, b.delta2)
            return
        credit.prepare(self, eng, st, b, slot, sb)
        fused = st.fused_merge
        inv_count = b.inv_count if fused else b.ones
        cuts = st.cut_members
        # python merges: one member at a time, the merge called between kernel calls
        ranges = [(m - 1, stop)] if fused else [(k, k) for k in range(m - 1, -1, -1)]
        if cuts:  # truncation (Graph.cut): segments scanned apart, member c proposes nothing to c - 1
            ranges = _cut_ranges(ranges, cuts, fused)
            for c in cuts:
                sb.p[c].fill(0)
        for start, end in ranges:
            eng.finalize_merge(st, b, [start])
            if start < end:
                continue
            credit.scan(eng, st, b, slot, sb, code, inv_count, start, end)
        if cuts or not credit.scan_computes_delta or not fused:
            mul_deriv(b.d2, b.h2, code, node.slope, b.delta2)
        elif stop == 1:  # the scan stopped before the head: only its delta is missing
            mul_deriv(b.d[0], b.h[0], code, node.slope, b.delta[0])
        if st.propose_init:
            scale = 1.0 if slot.deliver_scale is None else float(slot.deliver_scale[0])
            eng.deliver_member(*st.init_src, sb.p[0], scale)

    # ------------------------------------------------------------------ updates
    def grads(self, eng, st, b):
        node = st.node
        # delta becomes d(1/2||h - h_hat||^2)/d(pre-activation); its column sums are the bias gradient
        kd.negate_colsum(b.delta2, eng.grad_target(node.bias) if node.bias else b.colsum)
        for slot, sb in zip(st.slots, b.slots):
            g = eng.grad_target(slot.weight)
            if slot.src_is_index:
                kd.scatter_cols_add(g, sb.x1, b.delta2)
            elif slot.recurrent:
                eng.add_grad(slot.weight, b.delta2.T, b.hprev2)
            else:
                eng.add_grad(slot.weight, b.delta2.T, sb.x2)

    def inverse_grads(self, eng, st, b):
        for slot, sb in zip(st.slots, b.slots):
            if slot.inverse is None or not slot.credit.needs_inverse:
                continue
            inv = slot.inverse
            if not inv.impl.has_params:  # nothing to train (the analytic inverse): only its reconstruction loss
                inv.impl.report(self, eng, st, b, slot, sb)
                continue
            self.inverse_at_forward(eng, st, b, slot, sb)
            gcode = eng.inv_codes[(st.id, slot.index)]
            if inv.noise > 0:
                node = st.node
                eng.rng.standard_normal(out=sb.noise, dtype=sb.noise.dtype)
                kd.add_noise(sb.x, sb.noise, sb.x.dtype.type(inv.noise), sb.xn)
                # forward again from the corrupted input, other inputs at forward values
                if st.chain and slot.recurrent:
                    aj2 = b.a2
                else:
                    _accumulate(eng, st, b, slot.index, sb.aj2, eng.wt)
                    aj2 = sb.aj2
                bias = eng.params[node.bias] if node.bias else b.zero_bias
                np.dot(sb.xn2, eng.wt[node.weights[slot.index]], out=sb.fn2)
                add_bias_activate(sb.fn2, aj2, bias, eng.codes[st.id], node.slope, sb.fn2)
                if slot.context is not None:
                    self._noisy_context(eng, slot, sb)  # sb.cz: the siblings at the corrupted input
                # sb.fn becomes the inverse's input phi(f(h_u + eps)) (f itself for the learned kind)
                inv.impl.features(eng, st, sb.fn2, sb.fn2)
                np.dot(sb.fn2, eng.wt[inv.weight], out=sb.gn2)
                if slot.context is not None:
                    np.dot(sb.cz2, eng.wt[slot.context.group], out=sb.ogt2)
                    sb.gn2 += sb.ogt2
                add_bias_activate(sb.gn2, sb.og2, eng.zero_src[slot.src_size], gcode, inv.slope, sb.gn2)
            inv.loss_impl.grads(eng, st, b, slot, sb, gcode)  # the objective (tpgraph.inverse_losses)

    @staticmethod
    def _noisy_context(eng, slot, sb):
        """``sb.cz = act_s(a_s + W_s eps)``: each member's sibling recomputed at the corrupted input ``h_u + eps``.

        ``a_s`` is the sibling's pre-activation at the forward values (its
        other inputs stay there): its value itself for a linear sibling (logits),
        else summed again into ``sb.cpre``. Zeros where a member has no sibling.
        """
        ctx = slot.context
        sst, sbuf = eng.plan.stacks[ctx.src], eng.buf.stacks[ctx.src]
        snode = sst.node
        ns = slot.src_size
        np.multiply(sb.noise.reshape(-1, ns), sb.noise.dtype.type(slot.inverse.noise), out=sb.gn2)  # eps
        np.dot(sb.gn2, eng.wt[ctx.weight], out=sb.cz2)
        if sb.cpre is None:  # identity: the value is the pre-activation
            pre = sbuf.h
        else:
            _accumulate(eng, sst, sbuf, -1, sb.cpre2, eng.wt)
            if snode.bias:
                sb.cpre2 += eng.params[snode.bias]
            pre = sb.cpre
        kd.context_activate(sb.cz, pre, ctx.rows, eng.codes[ctx.src], snode.slope)


class AddRunner(DataRunner):
    """Elementwise sum; its local Jacobian is the identity, so ``P = D`` on every edge."""

    def forward(self, eng, st, b):
        first = True
        for slot, sb in zip(st.slots, b.slots):
            _slot_input(eng, st, b, slot, sb)
            if first:
                np.copyto(b.h, sb.x)
                first = False
            else:
                b.h += sb.x

    def propose(self, eng, st, b):
        eng.finalize_merge(st, b, range(st.m))
        for slot, sb in zip(st.slots, b.slots):
            if slot.propose:
                eng.deliver(st, slot, sb)


class ElementwiseRunner(DataRunner, abc.ABC):
    """Parameter-free elementwise kinds: forward, and per credit edge its local JVP or exact inverse.

    A subclass writes :meth:`compute` (the values ``h`` from the inputs'
    forward values ``sb.x2``), :meth:`jvp` (``P = J_u^T D``, the ``gradient``
    rule and any rule that needs neither weights nor an inverse) and, for
    kinds with an exact inverse, :meth:`inverse` (``dtp``: ``P = g(h + D) -
    g(h)``; ``tp``: ``P = g(h + D) - h_u``). The graph has already refused
    rules a kind cannot honour.
    """

    def forward(self, eng, st, b):
        for slot, sb in zip(st.slots, b.slots):
            _slot_input(eng, st, b, slot, sb)
        self.compute(eng, st, b)

    def propose(self, eng, st, b):
        eng.finalize_merge(st, b, range(st.m))
        for slot, sb in zip(st.slots, b.slots):
            if not slot.propose:
                continue
            if slot.credit.needs_inverse:
                self.inverse(eng, st, b, slot, sb, getattr(slot.credit, "difference", True))
            else:
                self.jvp(eng, st, b, slot, sb)
            eng.deliver(st, slot, sb)

    @abc.abstractmethod
    def compute(self, eng, st, b):
        """Write the stack's forward values (each elementwise kind's own kernel)."""

    @abc.abstractmethod
    def jvp(self, eng, st, b, slot, sb):
        """Write the proposal of a ``gradient`` edge into ``sb`` (each kind's local Jacobian-vector product)."""

    def inverse(self, eng, st, b, slot, sb, difference):
        raise GraphError(f"{st.kind} node {st.members[0]!r} has no inverse")  # refused by validation first


class MultiplyRunner(ElementwiseRunner):
    """``h = prod_i x_i``; ``P_i = D * prod_{j != i} x_j``; no inverse."""

    def compute(self, eng, st, b):
        x = [sb.x2 for sb in b.slots]
        ke.mul_blocks(x[0], x[1], b.h2)
        for xi in x[2:]:
            ke.mul_blocks(b.h2, xi, b.h2)

    def jvp(self, eng, st, b, slot, sb):
        src = b.d2
        for j, other in enumerate(b.slots):
            if j != slot.index:
                ke.mul_blocks(src, other.x2, sb.p2)
                src = sb.p2


class ActivationRunner(ElementwiseRunner):
    """``h = act(x)``; ``P = act'(x) * D`` (through the output); exact inverse for invertible activations."""

    def compute(self, eng, st, b):
        node = st.node
        code = act_code(node.act, eng.graph.dtype, eng.fast_tanh)
        bias_activate(b.slots[0].x2, b.zero_bias, code, node.slope, b.h2)

    def jvp(self, eng, st, b, slot, sb):
        node = st.node
        mul_deriv(b.d2, b.h2, act_code(node.act, eng.graph.dtype, eng.fast_tanh), node.slope, sb.p2)

    def inverse(self, eng, st, b, slot, sb, difference):
        node = st.node
        code = act_code(node.act, eng.graph.dtype, eng.fast_tanh)
        ke.act_inverse_displacement(b.h2, b.d2, sb.x2, difference, code, node.slope, node.clip, sb.p2)


class ScaleRunner(ElementwiseRunner):
    """``h = c x``; ``P = c D``; exact inverse ``x = h / c`` (dtp: ``P = D / c``)."""

    def compute(self, eng, st, b):
        ke.scale_block(b.slots[0].x2, b.h2.dtype.type(st.node.factor), b.h2)

    def jvp(self, eng, st, b, slot, sb):
        ke.scale_block(b.d2, b.h2.dtype.type(st.node.factor), sb.p2)

    def inverse(self, eng, st, b, slot, sb, difference):
        inv = b.h2.dtype.type(1.0 / st.node.factor)
        if difference:
            ke.scale_block(b.d2, inv, sb.p2)
        else:  # g(h + D) - x
            np.add(b.h2, b.d2, out=sb.p2)
            ke.scale_block(sb.p2, inv, sb.p2)
            sb.p2 -= sb.x2


class LossRunner(DataRunner):
    """Losses: value in forward, and the proposal ``-alpha dL/dh`` for the prediction."""

    def forward(self, eng, st, b):
        for slot, sb in zip(st.slots, b.slots):
            _slot_input(eng, st, b, slot, sb)
        node = st.node
        alpha = eng.alpha if node.alpha is None else node.alpha
        scale = 1.0 / eng.buf.B if node.reduction == "mean" else 1.0
        pred, other = b.slots
        out = pred.p2 if pred.p2 is not None else eng.loss_scratch(st, b)
        if node.kind == "cross_entropy":
            kl.softmax_xent(pred.x2, other.x1, -alpha * scale, b.loss.reshape(-1), out)
        else:
            kl.squared_error(pred.x2, other.x2, -alpha * scale, b.loss.reshape(-1), out)

    def propose(self, eng, st, b):
        slot, sb = st.slots[0], b.slots[0]
        if slot.propose:
            eng.deliver(st, slot, sb)


RUNNERS = {
    "input": DataRunner(),
    "index_input": DataRunner(),
    "dense": DenseRunner(),
    "softmax_output": DenseRunner(),
    "add": AddRunner(),
    "multiply": MultiplyRunner(),
    "activation": ActivationRunner(),
    "scale": ScaleRunner(),
    "cross_entropy": LossRunner(),
    "mse": LossRunner(),
}
