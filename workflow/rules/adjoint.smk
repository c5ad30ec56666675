# Rules of the 'adjoint' stage (see README, 'Workflow').
