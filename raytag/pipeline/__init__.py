"""Pure stage logic of the multi-stage noisy-label pipeline (no Ray, no training loop).

The training worker calls these between stages:
  selection.select_noisy_subset   stage 0's rough noisy subset (seed 000's "best50s")
  filters.accept_by_rule          trust noisy clips the stage-1 model agrees with
  spreading.spread_labels         label spreading over embeddings (seed 002), combine_filters
  schedule.lower_bound            scheduled lower threshold of the pseudo-label rounds
  pseudo.select_pseudo            which unlabelled clips a round takes, and their targets
  report                          filter precision/recall against known truth, t-SNE plot
"""
