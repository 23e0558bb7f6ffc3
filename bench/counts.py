"""Work of each benchmarked op: floating-point operations and bytes moved, from shapes alone.

Conv counts a multiply-add as 2 FLOPs: ``2*N*K*OH*OW*C*R*S`` per pass (forward,
backward-input and backward-weight each do the same number). Bytes are the
minimum each op must read and write once (float32 data, int32 argmax).
"""
from gpuconv.kernels.indexing import conv_output_size

# name: (N, C, H, W, K); every conv is 3x3, stride 1, 'same'; pooling is 2x2/2 on the conv output
SHAPES = {
    "mnist_conv1": (128, 1, 28, 28, 32),       # the example model's first layer
    "mnist_conv2": (128, 32, 14, 14, 64),
    "cifar_conv": (128, 64, 32, 32, 64),
    "neu_conv1": (16, 1, 200, 200, 32),        # the seeds' steel-defect model (200x200 grey images)
    "neu_conv2": (16, 32, 100, 100, 64),
    "neu_conv3": (16, 64, 50, 50, 128),
    "resnet_conv": (64, 64, 56, 56, 64),       # a ResNet-like stage
}
SMOKE_SHAPES = {"tiny": (2, 3, 9, 7, 4)}
KERNEL, POOL = 3, 2

CONV_OPS = ("conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight")
POOL_OPS = ("max_pool_forward", "max_pool_backward", "avg_pool_forward", "avg_pool_backward")
RELU_OPS = ("relu_forward", "relu_backward")
OPS = CONV_OPS + POOL_OPS + RELU_OPS
FLOAT_BYTES, INDEX_BYTES = 4, 4


def conv_flops(N, C, H, W, K, R=KERNEL, S=KERNEL, stride=1, pad=1):
    """2 * N*K*OH*OW * C*R*S: one multiply and one add per tap."""
    OH = conv_output_size(H, 2 * pad, R, stride, 1)
    OW = conv_output_size(W, 2 * pad, S, stride, 1)
    return 2 * N * K * OH * OW * C * R * S


def pool_output(N, K, H, W):
    """Output shape of the 2x2/2 'valid' pooling of an (N, K, H, W) activation."""
    return N, K, H // POOL, W // POOL


def op_work(op, shape):
    """``(flops, bytes)`` of ``op`` on benchmark shape ``(N, C, H, W, K)``.

    Pooling and ReLU run on the conv's output (N, K, H, W). Conv bytes count the
    input, filters and output once each.
    """
    N, C, H, W, K = shape
    act_in, act_out, weights = N * C * H * W, N * K * H * W, K * C * KERNEL * KERNEL
    if op in CONV_OPS:
        return conv_flops(N, C, H, W, K), FLOAT_BYTES * (act_in + weights + act_out)
    pooled = N * K * (H // POOL) * (W // POOL)
    data = {
        "max_pool_forward": FLOAT_BYTES * (act_out + pooled) + INDEX_BYTES * pooled,  # x in; y, argmax out
        "max_pool_backward": FLOAT_BYTES * (pooled + act_out) + INDEX_BYTES * pooled,  # dy, argmax in; dx out
        "avg_pool_forward": FLOAT_BYTES * (act_out + pooled),
        "avg_pool_backward": FLOAT_BYTES * (pooled + act_out),
        "relu_forward": FLOAT_BYTES * 2 * act_out,   # x in, y out
        "relu_backward": FLOAT_BYTES * 3 * act_out,  # dy, y in; dx out
    }
    return 0, data[op]
