"""Judge backends: what answers one judge call. `base` is the contract (`JudgeBackend`) and the
OpenAI chat-completion reply shape both engines return; `openai` talks to a judge server,
`embedded` runs llama.cpp in-process. `pipeline.replicas` spreads calls over several servers."""
