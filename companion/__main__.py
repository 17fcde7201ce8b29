from midi_companion.cli import main

raise SystemExit(main())
