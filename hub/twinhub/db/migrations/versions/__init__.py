"""One module per schema revision; a package only so that wheels ship the files."""
