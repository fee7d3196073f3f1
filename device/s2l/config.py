# generated from host/skip2lora/config.py by tools/write_device_config.py; do not edit
# The board's method names, adapter kinds and fine-tuning defaults, the host's.
METHODS = ('skip2lora', 'skip-lora', 'lora-all', 'lora-last', 'ft-last', 'ft-bias', 'ft-all')
SKIP_METHODS = ('skip2lora', 'skip-lora')
BOARD_METHODS = ('skip2lora', 'skip-lora', 'lora-all', 'ft-last')
KIND_SKIP = 0
KIND_PARALLEL = 1
KIND_DELTA = 2
BACKENDS = ('auto', 'thumb', 'viper', 'ulab', 'python', 'float')
DATASET_DTYPES = ('int8', 'f32')
LR_AUTO = 'auto'
METHOD = 'skip2lora'
RANK = 4
ALPHA = None
LR = 0.01
EPOCHS = 20
BATCH_SIZE = 1
MOMENTUM = 0.0
SEED = 0
TARGETS = 'all'
SHUFFLE = True
BACKEND = 'auto'
DATASET_DTYPE = 'int8'
