"""Independent float64 references: scipy.signal and plain NumPy loops, never our kernels."""
import numpy as np
from scipy import signal


def conv2d(x, w, b=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), relu=False):
    """Sum over input channels of scipy.signal.correlate2d on the explicitly padded input.

    Stride subsamples the stride-1 result. With dilation, a float64 loop over the kernel taps
    instead (a kernel with zeros inserted would multiply NaN/Inf inputs by those zeros, which
    the convolution never does). Empty batches, channels and filters give the empty (or
    bias-only) result.
    """
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    N, C = x.shape[:2]
    K, _, R, S = w.shape
    xp = np.pad(x, ((0, 0), (0, 0)) + tuple(padding))
    extent = ((R - 1) * dilation[0] + 1, (S - 1) * dilation[1] + 1)
    full = (xp.shape[2] - extent[0] + 1, xp.shape[3] - extent[1] + 1)  # the stride-1 'valid' size
    out = np.zeros((N, K) + tuple(len(range(0, f, s)) for f, s in zip(full, stride)))
    OH, OW = out.shape[2:]
    if tuple(dilation) != (1, 1):
        for r in range(R):
            for s in range(S):
                rows = slice(r * dilation[0], r * dilation[0] + (OH - 1) * stride[0] + 1, stride[0])
                cols = slice(s * dilation[1], s * dilation[1] + (OW - 1) * stride[1] + 1, stride[1])
                out += np.einsum("nchw,kc->nkhw", xp[:, :, rows, cols], w[:, :, r, s]) if OH and OW else 0
    else:
        for n in range(N):
            for k in range(K):
                plane = np.zeros(full)
                for c in range(C):
                    plane += signal.correlate2d(xp[n, c], w[k, c], mode="valid")
                out[n, k] = plane[::stride[0], ::stride[1]]
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return np.maximum(out, 0) if relu else out


def pool2d(x, mode, pool, stride, padding):
    """Plain loops; padded positions are ignored (never the max, not counted in the average)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    (pt, pb), (pl, pr) = padding
    OH = (H + pt + pb - pool[0]) // stride[0] + 1
    OW = (W + pl + pr - pool[1]) // stride[1] + 1
    out = np.zeros((N, C, OH, OW))
    for oh in range(OH):
        for ow in range(OW):
            h0, w0 = oh * stride[0] - pt, ow * stride[1] - pl
            win = x[:, :, max(h0, 0):h0 + pool[0], max(w0, 0):w0 + pool[1]]
            out[:, :, oh, ow] = win.max(axis=(2, 3)) if mode == "max" else win.mean(axis=(2, 3))
    return out


def numerical_grad(f, array, eps=1e-6):
    """Float64 central differences of the scalar f() with respect to every element of ``array`` (in place)."""
    grad = np.zeros_like(array, dtype=np.float64)
    flat, gflat = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        up = f()
        flat[i] = old - eps
        down = f()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return grad


def tf_same_padding(in_size, kernel, stride, dilation=1):
    """TensorFlow's 'SAME' rule, written out independently: (before, after) with the odd pixel after."""
    out = (in_size + stride - 1) // stride
    effective = (kernel - 1) * dilation + 1
    total = max(0, (out - 1) * stride + effective - in_size)
    return total // 2, total - total // 2


def explicit_padding(padding, in_hw, kernel_hw, stride, dilation=(1, 1)):
    """Any padding form of the public API -> ((top, bottom), (left, right)), for the references."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return tuple(tf_same_padding(i, k, s, d) for i, k, s, d in zip(in_hw, kernel_hw, stride, dilation))
    if isinstance(padding, int):
        return (padding, padding), (padding, padding)
    if isinstance(padding[0], int):
        return (padding[0], padding[0]), (padding[1], padding[1])
    return tuple(tuple(p) for p in padding)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def check_gradients(fn, arrays, rtol=1e-5, atol=1e-7, seed=0):
    """Compare autograd gradients of sum(fn(*tensors) * G) with float64 central differences, every element.

    Runs on the active backend (inputs moved there); the differences are taken on the host in float64.
    """
    import gpuconv
    from gpuconv.backend import to_device, to_host
    arrays = [np.array(a, np.float64) for a in arrays]
    tensors = [gpuconv.Tensor(to_device(a), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    weights = np.random.default_rng(seed).standard_normal(out.shape)
    out.backward(to_device(weights))

    def loss():
        return float((fn(*[gpuconv.Tensor(to_device(a)) for a in arrays]).numpy() * weights).sum())

    for i, (array, tensor) in enumerate(zip(arrays, tensors)):
        expected = numerical_grad(loss, array)
        np.testing.assert_allclose(to_host(tensor.grad), expected, rtol=rtol, atol=atol, err_msg=f"input {i}")


def conv2d_grads(x, w, dy, stride, padding, dilation):
    """(dx, dw, db) of conv2d for upstream gradient dy, by float64 NumPy loops over the kernel taps.

    Each tap (r, s) touches a strided slice of the padded input: dw[:, :, r, s] is that
    slice contracted with dy, and dx gets dy spread back onto the same slice.
    """
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    (pt, pb), (pl, pr) = padding
    N, C, H, W = x.shape
    K, _, R, S = w.shape
    OH, OW = dy.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    dpadded = np.zeros_like(padded)
    dw = np.zeros_like(w)
    for r in range(R):
        for s in range(S):
            rows = slice(r * dilation[0], r * dilation[0] + (OH - 1) * stride[0] + 1, stride[0])
            cols = slice(s * dilation[1], s * dilation[1] + (OW - 1) * stride[1] + 1, stride[1])
            dw[:, :, r, s] = np.einsum("nkhw,nchw->kc", dy, padded[:, :, rows, cols])
            dpadded[:, :, rows, cols] += np.einsum("nkhw,kc->nchw", dy, w[:, :, r, s])
    return dpadded[:, :, pt:pt + H, pl:pl + W], dw, dy.sum(axis=(0, 2, 3))


def pool2d_grad(x, dy, mode, pool, stride, padding):
    """dx of pooling by plain loops: max sends each window's gradient to its first maximum, avg spreads it."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    (pt, _), (pl, _) = padding
    dx = np.zeros_like(x)
    N, C, H, W = x.shape
    for n in range(N):
        for c in range(C):
            for oh in range(dy.shape[2]):
                for ow in range(dy.shape[3]):
                    h0, w0 = oh * stride[0] - pt, ow * stride[1] - pl
                    hs, ws = slice(max(h0, 0), h0 + pool[0]), slice(max(w0, 0), w0 + pool[1])
                    window = x[n, c, hs, ws]
                    if mode == "max":
                        r, s = np.unravel_index(np.argmax(window), window.shape)
                        dx[n, c, max(h0, 0) + r, max(w0, 0) + s] += dy[n, c, oh, ow]
                    else:
                        dx[n, c, hs, ws] += dy[n, c, oh, ow] / window.size
    return dx
