"""Model packages at run time: the manifest and its checks, the installed packages and the
choice among them, the catalog and pulling, and the bundled tiny packages (tiny/). Building
packages is edged.recipe's."""
