"""Tests of this kind; a package so that same-named files in other kinds do not clash."""
