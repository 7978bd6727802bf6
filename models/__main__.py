"""`python -m models`: the classification models of the installed torchvision."""

from models.zoo import main

raise SystemExit(main())
