//! Output-size rules of PyTorch's spatial operators, shared by shape
//! inference and the kernels so the two can never disagree.

/// `floor((in + 2p - d(k-1) - 1) / s) + 1` as in `nn.Conv2d`; `None` when the
/// (dilated) kernel does not fit the padded input.
pub fn conv_out(
    input: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
) -> Option<usize> {
    let span = dilation * (k - 1) + 1;
    let padded = input + 2 * pad;
    if stride == 0 || k == 0 || padded < span {
        return None;
    }
    Some((padded - span) / stride + 1)
}

/// `nn.ConvTranspose2d`: `(in-1)s - 2p + d(k-1) + output_padding + 1`;
/// `None` when that is not positive.
pub fn conv_transpose_out(
    input: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    output_padding: usize,
) -> Option<usize> {
    let full =
        (input.checked_sub(1)?) * stride + dilation * (k.checked_sub(1)?) + output_padding + 1;
    full.checked_sub(2 * pad).filter(|&n| n > 0)
}

/// Pooling output size with PyTorch's ceil-mode rule: in ceil mode the last
/// window must start inside the input or the left padding, otherwise it is
/// dropped. `None` when the window does not fit.
pub fn pool_out(
    input: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
) -> Option<usize> {
    let span = dilation * (k.checked_sub(1)?) + 1;
    let padded = input + 2 * pad;
    if stride == 0 || padded < span {
        return None;
    }
    let num = padded - span;
    let mut out = if ceil {
        num.div_ceil(stride)
    } else {
        num / stride
    } + 1;
    if ceil && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_sizes_match_pytorch() {
        assert_eq!(conv_out(224, 7, 2, 3, 1), Some(112));
        assert_eq!(conv_out(56, 3, 1, 1, 1), Some(56));
        assert_eq!(conv_out(56, 1, 2, 0, 1), Some(28));
        assert_eq!(conv_out(5, 3, 1, 0, 2), Some(1));
        assert_eq!(conv_out(2, 5, 1, 1, 1), None);
    }

    #[test]
    fn pool_sizes_match_pytorch() {
        assert_eq!(pool_out(112, 3, 2, 1, 1, false), Some(56));
        // nn.MaxPool2d(3, 2, ceil_mode=True) on 6: ceil((6-3)/2)+1 = 3.
        assert_eq!(pool_out(6, 3, 2, 0, 1, true), Some(3));
        assert_eq!(pool_out(6, 3, 2, 0, 1, false), Some(2));
        // ceil mode with padding: last window would start in the right padding.
        assert_eq!(pool_out(5, 2, 2, 1, 1, true), Some(3));
        assert_eq!(pool_out(4, 2, 2, 1, 1, true), Some(3));
    }

    #[test]
    fn conv_transpose_sizes_match_pytorch() {
        assert_eq!(conv_transpose_out(4, 2, 2, 0, 1, 0), Some(8));
        assert_eq!(conv_transpose_out(7, 3, 2, 1, 1, 1), Some(14));
    }
}
