from kernels.quant import QuantMatrix, dequantize_ref, quant_matmul, quant_matmul_ref, quant_matvec, quant_matvec_ref, quant_rows, quant_rows_ref  # noqa: E402,F401
