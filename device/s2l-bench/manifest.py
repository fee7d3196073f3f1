# The board side of `skip2lora bench`, an extension of s2l in micropython-lib's base-plus-
# extension layout (as umqtt.robust requires umqtt.simple). require("s2l") names the base
# package, device/manifest.py in this checkout. `skip2lora bench` deploys the extension beside
# s2l; `skip2lora flash` and device/package.json leave it out.
metadata(description="Skip2-LoRA on-board benchmark: timed fine-tuning and kernels", version="0.1.0")
require("s2l")
package("s2l_bench")
