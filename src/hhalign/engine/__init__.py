"""What every stage shares: the table of stages (``table``), a stage's run in its folder with skip and resume
and the plan (``work``), and the one reader of a finished run folder (``folder``)."""
