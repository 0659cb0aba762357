"""Statistics: intervals and paired tests (``intervals``), the rates and their caveats (``rates``), and how far a
judge agrees with a reference and with answer length (``validity``). Pure numpy/scipy."""
