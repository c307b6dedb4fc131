int nnc_placeholder() { return 0; }
