"""Sample-quality metrics: exact and toy metrics (:mod:`.toy`); image metrics on features (:mod:`.images`):
extractors (:mod:`.features`, :mod:`.digits_classifier`, :mod:`.inception`), streaming moments (:mod:`.stats`),
Fréchet distance (:mod:`.frechet`) KID (:mod:`.kid`) and
improved precision / recall (:mod:`.precision_recall`)."""
