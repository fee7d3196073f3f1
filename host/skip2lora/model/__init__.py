"""The model: import (ONNX, torch), the network it becomes, int8 quantisation, compilation to
.s2lm, the binary formats shared with the board, export (ONNX, PEFT) and evaluation."""
