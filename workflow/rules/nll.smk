# Rules of the 'nll' stage (see README, 'Workflow').
