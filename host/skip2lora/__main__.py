from skip2lora.cli import main

raise SystemExit(main())
