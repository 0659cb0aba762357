"""Data formats and sources: HH-RLHF dialogues (``hh``), where data and models come from (``sources``), raw rows
(``readers``), per-file formats and rendering (``formats``), preference pairs (``pairs``), eval prompt sets
(``prompts``) and response files (``responses``). No module here knows the run folder."""
