"""What scripts/package.py needs to make a model-zoo zip: which code and packages a bundle reaches
(:mod:`zoo.requirements`), its code and configs rewritten to run from the zip (:mod:`zoo.vendoring`)."""
