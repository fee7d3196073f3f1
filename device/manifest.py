# For freezing the package into a firmware image (makes the bytecode live in flash, not RAM):
#   make BOARD=RPI_PICO FROZEN_MANIFEST=/path/to/device/manifest.py
metadata(description="Skip2-LoRA fine-tuning on the board", version="0.1.0")
package("s2l")
