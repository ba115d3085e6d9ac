"""Translation: greedy, beam and sampling search, forced scoring, ensembles, alignment and
attention, the engines (torch and CTranslate2) and lines-in/lines-out on top of them."""
