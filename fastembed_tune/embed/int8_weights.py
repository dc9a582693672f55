"""The int8 weights of a quantised ONNX graph as onnxruntime runs them exactly on this CPU.

:func:`unsigned_weights` rewrites int8 weights as uint8 with zero point 128 where onnxruntime's
u8 x s8 GEMM would saturate (:func:`fastembed_tune.core.cpu.int8_pairs_saturate`); the
:class:`~fastembed_tune.embed.onnx_embedder.OnnxEmbedder` applies it at load time.
"""
from __future__ import annotations

import numpy as np

INT8_WEIGHT_OPS = {"MatMulIntegerToFloat": (1, 5), "QAttention": (1, 7)}  # op -> (weight, weight zero point)


def unsigned_weights(model) -> int:
    """Rewrite, in place, the int8 weights of every ``MatMulIntegerToFloat`` and ``QAttention`` in the
    ONNX ``model`` as uint8 (w + 128) with zero point 128 (+ 128 on a given int8 zero point): the same
    products, exactly, but onnxruntime then runs its u8 x u8 GEMM. Where the u8 x s8 one adds product
    pairs in 16 bits (:func:`fastembed_tune.core.cpu.int8_pairs_saturate`: x86 without VNNI) it saturates
    on this graph's per-token activations (a lower parity with the float model); u8 x u8 is exact
    there. Returns how many nodes were rewritten.

    >>> import onnx
    >>> from onnx import helper, numpy_helper
    >>> w = numpy_helper.from_array(np.array([[-127, 5]], np.int8).T, "w")
    >>> node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "s", "ws", "zp"], ["y"], domain="com.microsoft")
    >>> m = helper.make_model(helper.make_graph([node], "g", [], [], initializer=[w]))
    >>> unsigned_weights(m), numpy_helper.to_array(m.graph.initializer[0]).ravel().tolist(), m.graph.node[0].input[5]
    (1, [1, 133], 'w_zp_u8')
    """
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    done, count = set(), 0
    for n in model.graph.node:
        if n.op_type not in INT8_WEIGHT_OPS:
            continue
        wi, zi = INT8_WEIGHT_OPS[n.op_type]
        w = inits.get(n.input[wi]) if len(n.input) > wi else None
        if w is None or (w.name not in done and numpy_helper.to_array(w).dtype != np.int8):
            continue
        ins = list(n.input) + [""] * max(0, zi + 1 - len(n.input))
        zp = inits.get(ins[zi])
        if ins[zi] and (zp is None or (ins[zi] not in done and numpy_helper.to_array(zp).dtype != np.int8)):
            continue  # a zero point computed at run time, or not int8: leave the node as it is
        for name in {w.name, ins[zi]} - {""} - done:
            a = numpy_helper.to_array(inits[name]).astype(np.int16) + 128
            inits[name].CopyFrom(numpy_helper.from_array(a.astype(np.uint8), name))
            done.add(name)
        if not ins[zi]:
            ins[zi] = f"{w.name}_zp_u8"
            if ins[zi] not in inits:
                inits[ins[zi]] = numpy_helper.from_array(np.asarray(np.uint8(128)), ins[zi])
                model.graph.initializer.append(inits[ins[zi]])
        del n.input[:]
        n.input.extend(ins)
        count += 1
    return count
