"""Learning: the continual learner that keeps one detector current, experience by experience.

`learner` holds the model, the Avalanche strategy and what was learned (`train_sequence`);
`learner_state` is that state as plain data, `learner_versions` keeps it per registered version;
`pinning` keeps learned experiences' faces; `strategies` builds an Avalanche strategy, model and
optimizer from params.yaml; `plugins/` are its Avalanche plugins, one per file; `continual/` the
deepfake-specific methods (SUR-LID, DFIL); `memory` the C allocator's settings for long runs.
"""
